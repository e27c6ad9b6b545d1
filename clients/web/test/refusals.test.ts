// What the app tells a patient for each documented refusal (decided by code and reason only).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import type { HisFailure } from "../src/client/index.js";
import { callRefusal, signInRefusal } from "../app/src/refusals.js";
import { chooseText } from "../app/src/text.js";

const text = chooseText(["en-GB"]);

function failure(code: Code, reason?: string, extra: Partial<HisFailure> = {}): HisFailure {
  return { code, codeName: "", message: "", reason, metadata: {}, fieldViolations: [], ...extra };
}

describe("callRefusal", () => {
  it("says a full or blocked slot was taken", () => {
    for (const reason of ["SLOT_FULL", "SLOT_BLOCKED"]) {
      assert.equal(
        callRefusal(text, failure(Code.FailedPrecondition, reason)).message,
        text.slotTaken,
      );
    }
  });

  it("sends an unauthenticated patient back to sign-in", () => {
    const refusal = callRefusal(text, failure(Code.Unauthenticated, "TOKEN_EXPIRED"));
    assert.deepEqual(refusal, { message: text.sessionEnded, signedOut: true });
    assert.equal(callRefusal(text, failure(Code.Unauthenticated)).signedOut, true);
  });

  it("tells a double booking apart from a taken slot", () => {
    const refusal = callRefusal(text, failure(Code.FailedPrecondition, "PATIENT_DOUBLE_BOOKED"));
    assert.equal(refusal.message, text.doubleBooked);
  });

  it("says the system cannot be reached for UNAVAILABLE", () => {
    assert.equal(callRefusal(text, failure(Code.Unavailable)).message, text.unreachable);
  });

  it("asks to wait when the gateway's rate limit refused (HTTP 429)", () => {
    const limited = failure(Code.Unavailable, undefined, { httpStatus: 429 });
    assert.equal(signInRefusal(text, limited, 6).message, text.tooManyRequests);
  });
});

describe("signInRefusal", () => {
  it("tells a wrong code from an expired one", () => {
    assert.equal(
      signInRefusal(text, failure(Code.Unauthenticated, "SIGN_IN_CODE_INVALID"), 6).message,
      text.codeWrong,
    );
    const expired = signInRefusal(text, failure(Code.Unauthenticated, "SIGN_IN_CODE_EXPIRED"), 6);
    assert.deepEqual(expired, { message: text.codeExpired, signedOut: false });
  });

  it("says how long to wait after too many attempts", () => {
    const limited = failure(Code.ResourceExhausted, "SIGN_IN_RATE_LIMITED", {
      retryAfterMs: 240_000,
    });
    assert.equal(
      signInRefusal(text, limited, 6).message,
      "Too many attempts. Please try again in 4 minutes.",
    );
    const soon = failure(Code.ResourceExhausted, "SIGN_IN_RATE_LIMITED", { retryAfterMs: 29_100 });
    assert.equal(
      signInRefusal(text, soon, 6).message,
      "Too many attempts. Please try again in 30 seconds.",
    );
  });

  it("names the input that was malformed", () => {
    const badCode = failure(Code.InvalidArgument, "INVALID_ARGUMENT", {
      fieldViolations: [{ field: "code", description: "", reason: "" }],
    });
    assert.equal(signInRefusal(text, badCode, 6).message, "Enter the 6 digits of the code.");
    const badPhone = failure(Code.InvalidArgument, "INVALID_ARGUMENT", {
      fieldViolations: [{ field: "phone", description: "", reason: "" }],
    });
    assert.equal(signInRefusal(text, badPhone, 6).message, text.phoneInvalid);
  });

  it("speaks Chinese to a Chinese phone", () => {
    const zh = chooseText(["zh-CN", "en"]);
    assert.equal(
      signInRefusal(zh, failure(Code.Unauthenticated, "SIGN_IN_CODE_EXPIRED"), 6).message,
      "验证码已过期，请重新获取。",
    );
  });
});
