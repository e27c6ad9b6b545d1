// Sign-in with the phone number and the one-time code (iam StartPatientSignIn, then
// CompletePatientSignIn).
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { decodeFailure } from "../../src/client/index.js";
import { formatWhen, type App } from "./app.js";
import { busy, h, messageBox } from "./dom.js";
import { signInRefusal } from "./refusals.js";

export function signInView(app: App, notice?: string): HTMLElement {
  const { text, clients } = app;
  const error = messageBox("error");
  const info = messageBox("info");
  if (notice) error.textContent = notice;

  const phone = h("input", {
    id: "phone",
    type: "tel",
    required: true,
    autocomplete: "tel",
    attrs: { inputmode: "tel", "aria-describedby": "phone-hint" },
  });
  const send = h("button", { type: "submit" }, text.sendCode);
  const phoneForm = h(
    "form",
    {},
    h("label", { htmlFor: "phone" }, text.phoneLabel),
    h("p", { id: "phone-hint", className: "hint" }, text.phoneHint),
    phone,
    send,
  );

  const code = h("input", {
    id: "code",
    type: "text",
    required: true,
    autocomplete: "one-time-code",
    attrs: { inputmode: "numeric" },
  });
  const complete = h("button", { type: "submit" }, text.signIn);
  const again = h("button", { type: "button", className: "secondary" }, text.otherNumber);
  const codeForm = h(
    "form",
    { hidden: true },
    h("label", { htmlFor: "code" }, text.codeLabel),
    code,
    complete,
    again,
  );

  let signIn = "";
  let codeLength = 6;

  phoneForm.addEventListener("submit", (event) => {
    event.preventDefault();
    void busy(send, async () => {
      error.textContent = "";
      try {
        const started = await clients.iam.startPatientSignIn({ phone: phone.value.trim() });
        signIn = started.signIn;
        codeLength = started.codeLength || 6;
        code.maxLength = codeLength;
        code.value = "";
        const until = started.expireTime ? timestampDate(started.expireTime) : undefined;
        info.textContent = text.codeSent(formatWhen(app.locale, until));
        phoneForm.hidden = true;
        codeForm.hidden = false;
        code.focus();
      } catch (failure) {
        error.textContent = signInRefusal(text, decodeFailure(failure), codeLength).message;
        phone.focus();
      }
    });
  });

  codeForm.addEventListener("submit", (event) => {
    event.preventDefault();
    void busy(complete, async () => {
      error.textContent = "";
      try {
        const done = await clients.iam.completePatientSignIn({ signIn, code: code.value.trim() });
        const expiresAt = done.expireTime ? timestampDate(done.expireTime).getTime() : 0;
        app.signedIn({ token: done.accessToken, patient: done.patient, expiresAt });
      } catch (failure) {
        info.textContent = "";
        error.textContent = signInRefusal(text, decodeFailure(failure), codeLength).message;
        code.select();
      }
    });
  });

  again.addEventListener("click", () => {
    signIn = "";
    info.textContent = "";
    error.textContent = "";
    codeForm.hidden = true;
    phoneForm.hidden = false;
    phone.focus();
  });

  return h("section", {}, h("h1", {}, text.signInHeading), error, info, phoneForm, codeForm);
}
