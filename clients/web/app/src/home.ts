// The signed-in patient's page: their upcoming appointments (each can be cancelled) and booking a
// free slot of an outpatient clinic.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { decodeFailure } from "../../src/client/index.js";
import { DepartmentKind, type Department } from "../../src/gen/his/iam/v1/iam_service_pb.js";
import {
  AppointmentStatus,
  type Appointment,
  type Slot,
} from "../../src/gen/his/scheduling/v1/scheduling_service_pb.js";
import { formatWhen, type App } from "./app.js";
import { busy, h, messageBox } from "./dom.js";
import { callRefusal } from "./refusals.js";
import { APPOINTMENTS_PER_PAGE, upcomingAppointments } from "./upcoming.js";

const SLOTS_PER_PAGE = 12;

export function homeView(app: App): HTMLElement {
  const { text, clients } = app;
  const error = messageBox("error");
  const info = messageBox("info");
  const departments = new Map<string, Department>();
  // One request id per slot the patient tried to book: a retry after a lost answer (a dropped
  // connection) repeats the same id, so the service returns the first booking instead of a second.
  const requestIds = new Map<string, string>();

  const patient = (): string => app.session()?.patient ?? "";
  const departmentName = (name: string): string =>
    departments.get(name)?.displayName || text.unknownDepartment;

  /** What to show once the lists are fresh again: news, or why it did not work. */
  type Outcome = { readonly message: string; readonly isError: boolean };
  const show = ({ message, isError }: Outcome): void => {
    error.textContent = isError ? message : "";
    info.textContent = isError ? "" : message;
  };
  /** A refusal to show; undefined when the session is over and sign-in is shown instead. */
  const refusalOf = (failure: unknown): Outcome | undefined => {
    const refusal = callRefusal(text, decodeFailure(failure));
    if (refusal.signedOut) {
      app.signedOut(refusal.message);
      return undefined;
    }
    return { message: refusal.message, isError: true };
  };
  const refuse = (failure: unknown): void => {
    const outcome = refusalOf(failure);
    if (outcome) show(outcome);
  };

  // My appointments.
  const appointmentList = h("ul", { className: "cards", attrs: { "aria-live": "polite" } });
  const appointmentsSection = h(
    "section",
    { attrs: { "aria-labelledby": "mine" } },
    h("h2", { id: "mine" }, text.myAppointments),
    appointmentList,
  );

  const appointmentItem = (appointment: Appointment): HTMLLIElement => {
    const when = formatWhen(
      app.locale,
      appointment.startTime && timestampDate(appointment.startTime),
    );
    const arrived = appointment.status === AppointmentStatus.ARRIVED;
    const cancel = h(
      "button",
      { type: "button", className: "secondary", attrs: { "aria-label": text.cancelLabel(when) } },
      text.cancel,
    );
    cancel.addEventListener("click", () =>
      busy(cancel, async () => {
        let outcome: Outcome | undefined;
        try {
          await clients.scheduling.cancelAppointment({
            name: appointment.name,
            reason: text.cancelReason,
            etag: appointment.etag,
          });
          outcome = { message: text.cancelled(when), isError: false };
        } catch (failure) {
          outcome = refusalOf(failure);
          if (!outcome) return;
        }
        // The list first, then the news: what is announced is what the page shows.
        await loadAppointments();
        show(outcome);
      }),
    );
    return h(
      "li",
      {},
      h("strong", {}, text.appointmentLine(departmentName(appointment.department), when)),
      arrived && ` (${text.arrived})`,
      h("br"),
      !arrived && cancel,
    );
  };

  const loadAppointments = async (): Promise<void> => {
    try {
      const upcoming = await upcomingAppointments((pageToken) =>
        clients.scheduling.listAppointments({
          patient: patient(),
          statuses: [AppointmentStatus.BOOKED, AppointmentStatus.ARRIVED],
          pageSize: APPOINTMENTS_PER_PAGE,
          pageToken,
        }),
      );
      appointmentList.replaceChildren(
        ...(upcoming.length ? upcoming.map(appointmentItem) : [h("li", {}, text.noAppointments)]),
      );
    } catch (failure) {
      refuse(failure);
    }
  };

  // Booking: a department, then one of its free slots.
  const departmentSelect = h(
    "select",
    { id: "department" },
    h("option", { value: "" }, text.chooseDepartment),
  );
  const slotGrid = h("div", {
    className: "slots",
    attrs: { role: "group", "aria-labelledby": "free" },
  });
  const freeHeading = h("h3", { id: "free", hidden: true }, text.freeTimes);
  const later = h(
    "button",
    { type: "button", className: "secondary", hidden: true },
    text.laterTimes,
  );
  let nextPage = "";

  const slotButton = (slot: Slot): HTMLButtonElement => {
    const when = formatWhen(app.locale, slot.startTime && timestampDate(slot.startTime));
    const department = departmentName(slot.department);
    const button = h(
      "button",
      { type: "button", attrs: { "aria-label": text.bookLabel(department, when) } },
      when,
    );
    button.addEventListener("click", () => busy(button, () => book(slot, department, when)));
    return button;
  };

  const book = async (slot: Slot, department: string, when: string): Promise<void> => {
    const requestId = requestIds.get(slot.name) ?? newRequestId();
    requestIds.set(slot.name, requestId);
    const request = { patient: patient(), slot: slot.name, requestId };
    let outcome: Outcome | undefined;
    try {
      try {
        await clients.scheduling.bookAppointment(request);
      } catch (failure) {
        // ABORTED: a concurrent booking changed the slot while this one was made; the contract
        // says to retry with the same request id, once is enough to tell a race from a full slot.
        if (decodeFailure(failure).code !== Code.Aborted) throw failure;
        await clients.scheduling.bookAppointment(request);
      }
      requestIds.delete(slot.name);
      outcome = { message: text.booked(department, when), isError: false };
    } catch (failure) {
      const decoded = decodeFailure(failure);
      // A definite refusal ends this attempt: trying the slot again later is a new request.
      if (decoded.code !== Code.Unavailable && decoded.code !== Code.DeadlineExceeded) {
        requestIds.delete(slot.name);
      }
      outcome = refusalOf(failure);
      if (!outcome) return;
    }
    // The lists first, then the news: what is announced is what the page shows.
    await Promise.all([loadAppointments(), loadSlots(false)]);
    show(outcome);
  };

  const loadSlots = async (more: boolean): Promise<void> => {
    const department = departmentSelect.value;
    if (!department) {
      slotGrid.replaceChildren();
      freeHeading.hidden = later.hidden = true;
      return;
    }
    try {
      const reply = await clients.scheduling.listSlots({
        department,
        onlyFree: true,
        pageSize: SLOTS_PER_PAGE,
        pageToken: more ? nextPage : "",
      });
      nextPage = reply.nextPageToken;
      const buttons = reply.slots.map(slotButton);
      if (more) slotGrid.append(...buttons);
      else slotGrid.replaceChildren(...(buttons.length ? buttons : [h("p", {}, text.noFreeTimes)]));
      freeHeading.hidden = false;
      later.hidden = !nextPage;
    } catch (failure) {
      refuse(failure);
    }
  };

  departmentSelect.addEventListener("change", () => {
    show({ message: "", isError: false });
    void loadSlots(false);
  });
  later.addEventListener("click", () => busy(later, () => loadSlots(true)));

  const loadDepartments = async (): Promise<void> => {
    try {
      const reply = await clients.iam.listDepartments({
        kind: DepartmentKind.OUTPATIENT,
        pageSize: 100,
      });
      for (const department of reply.departments) {
        departments.set(department.name, department);
        departmentSelect.append(h("option", { value: department.name }, department.displayName));
      }
    } catch (failure) {
      refuse(failure);
    }
  };

  const bookingSection = h(
    "section",
    { attrs: { "aria-labelledby": "book" } },
    h("h2", { id: "book" }, text.bookHeading),
    h("label", { htmlFor: "department" }, text.departmentLabel),
    departmentSelect,
    freeHeading,
    slotGrid,
    later,
  );

  appointmentList.replaceChildren(h("li", {}, text.loading));
  // Departments first: the appointment list shows their names.
  void loadDepartments().then(loadAppointments);

  return h("section", {}, error, info, appointmentsSection, bookingSection);
}

/** A random request id; crypto.getRandomValues works where randomUUID does not (plain http). */
function newRequestId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}
