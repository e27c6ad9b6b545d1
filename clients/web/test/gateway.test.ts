// The mobile path end to end, from Node: @connectrpc/connect-node's grpc-web transport through the
// real Envoy gateway to the real services, as `his up` runs them. Started by
// tests/e2e/test_web_client.py, which brings the stack up and says where it is
// (gateway-support.ts).
import assert from "node:assert/strict";
import { request } from "node:http";
import { before, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { decodeFailure } from "../src/client/index.js";
import { setTimeout as sleep } from "node:timers/promises";
import { AuditService } from "../src/gen/his/audit/v1/audit_service_pb.js";
import { DepartmentKind, StaffRole } from "../src/gen/his/iam/v1/iam_service_pb.js";
import { AppointmentStatus } from "../src/gen/his/scheduling/v1/scheduling_service_pb.js";
import {
  clients,
  lastCode,
  signIn,
  stack,
  transport,
  wrongCode,
  type SignedIn,
  type Stack,
} from "./gateway-support.js";

/** The call's error, decoded; fails the test when the call succeeds. */
async function refusal(call: Promise<unknown>) {
  try {
    await call;
  } catch (error) {
    assert.ok(error instanceof ConnectError, `not a ConnectError: ${String(error)}`);
    return decodeFailure(error);
  }
  assert.fail("the call succeeded but should have been refused");
}

/** A CORS preflight of a grpc-web call from `origin`, as a browser sends it. */
function preflight(gateway: string, origin: string) {
  return new Promise<{ status: number; headers: Record<string, string | string[] | undefined> }>(
    (resolve, reject) => {
      const url = new URL("/his.scheduling.v1.SchedulingService/ListAppointments", gateway);
      const sent = request(url, {
        method: "OPTIONS",
        headers: {
          origin,
          "access-control-request-method": "POST",
          "access-control-request-headers": "authorization,content-type,x-grpc-web,x-user-agent",
        },
      });
      sent.on("response", (response) => {
        response.resume();
        resolve({ status: response.statusCode ?? 0, headers: response.headers });
      });
      sent.on("error", reject);
      sent.end();
    },
  );
}

describe("the grpc-web gateway", () => {
  let at: Stack;
  let first: SignedIn;
  let second: SignedIn;

  before(async () => {
    at = stack();
    first = await signIn(at, at.phones[0]);
    second = await signIn(at, at.phones[1]);
  });

  it("answers a signed-in patient's own appointments", async () => {
    assert.match(first.patient, /^patients\/.+/);
    const mine = await clients(at.gateway, first.token).scheduling.listAppointments({
      patient: first.patient,
    });
    // The demo books this patient into the first cardiology slot.
    assert.ok(mine.appointments.length > 0, "the demo patient's booking is not listed");
    for (const appointment of mine.appointments) assert.equal(appointment.patient, first.patient);
  });

  it("shows a patient their own demographics and no one else's", async () => {
    const { patient } = clients(at.gateway, first.token);
    assert.equal((await patient.getPatient({ name: first.patient })).name, first.patient);
    const failure = await refusal(patient.getPatient({ name: second.patient }));
    assert.equal(failure.codeName, "PERMISSION_DENIED");
  });

  it("refuses a call without a token as UNAUTHENTICATED", async () => {
    const failure = await refusal(
      clients(at.gateway).scheduling.listAppointments({ patient: first.patient }),
    );
    assert.equal(failure.codeName, "UNAUTHENTICATED");
  });

  it("refuses a forged token as UNAUTHENTICATED", async () => {
    const [header, payload] = first.token.split(".");
    const forged = `${header}.${payload}.${"A".repeat(342)}`;
    const failure = await refusal(
      clients(at.gateway, forged).scheduling.listAppointments({ patient: first.patient }),
    );
    assert.equal(failure.codeName, "UNAUTHENTICATED");
  });

  it("keeps a patient out of another patient's appointment", async () => {
    const owner = clients(at.gateway, first.token);
    const [clinic] = (await owner.iam.listDepartments({ kind: DepartmentKind.OUTPATIENT }))
      .departments;
    assert.ok(clinic, "no outpatient department is listed");
    const [slot] = (
      await owner.scheduling.listSlots({ department: clinic.name, onlyFree: true, pageSize: 1 })
    ).slots;
    assert.ok(slot, `no free slot in ${clinic.displayName}`);
    const booked = await owner.scheduling.bookAppointment({
      patient: first.patient,
      slot: slot.name,
      requestId: `node-gateway-${Date.now()}`,
    });
    assert.equal(booked.status, AppointmentStatus.BOOKED);
    try {
      // The other patient knows (or guesses) the appointment's name: every way in is closed.
      const intruder = clients(at.gateway, second.token).scheduling;
      // One call at a time (a thunk each), so that no refusal is left unawaited.
      for (const call of [
        () => intruder.getAppointment({ name: booked.name }),
        () => intruder.listAppointments({ patient: first.patient }),
        () => intruder.cancelAppointment({ name: booked.name, reason: "not mine" }),
        () => intruder.bookAppointment({ patient: first.patient, slot: slot.name }),
      ]) {
        assert.equal((await refusal(call())).codeName, "PERMISSION_DENIED");
      }
      const untouched = await owner.scheduling.getAppointment({ name: booked.name });
      assert.equal(untouched.status, AppointmentStatus.BOOKED);
    } finally {
      const cancelled = await owner.scheduling.cancelAppointment({
        name: booked.name,
        reason: "gateway test",
      });
      assert.equal(cancelled.status, AppointmentStatus.CANCELLED);
    }
  });

  it("refuses at the gateway an rpc that is not on the mobile allow-list", async () => {
    // An auditor's token is one the audit service accepts for ListAuditEvents: when the call is
    // refused, it is the gateway's route allow-list that refused it, not the service's policy.
    const audit = createClient(AuditService, transport(at.gateway, at.auditorToken));
    const iam = clients(at.gateway, at.auditorToken).iam;
    for (const call of [
      () => audit.listAuditEvents({ pageSize: 1 }),
      () => audit.verifyChain({}),
      // iam administration is never reachable from outside either.
      () =>
        iam.createStaffMember({
          staffMember: { username: "intruder", displayName: "X", roles: [StaffRole.ADMINISTRATOR] },
        }),
    ]) {
      const failure = await refusal(call());
      assert.ok(
        ["UNIMPLEMENTED", "NOT_FOUND", "PERMISSION_DENIED"].includes(failure.codeName),
        `unexpected ${failure.codeName}: ${failure.message}`,
      );
      assert.equal(failure.reason, undefined, "a service answered: it carries an ErrorInfo");
    }
  });

  it("allows a CORS preflight from a listed origin", async () => {
    const answer = await preflight(at.gateway, at.allowedOrigin);
    assert.ok(answer.status >= 200 && answer.status < 300, `status ${answer.status}`);
    assert.equal(answer.headers["access-control-allow-origin"], at.allowedOrigin);
    const allowed = String(answer.headers["access-control-allow-headers"]).toLowerCase();
    for (const header of ["authorization", "x-grpc-web", "content-type"]) {
      assert.ok(allowed.includes(header), `${header} not in allow-headers: ${allowed}`);
    }
    const exposed = String(answer.headers["access-control-expose-headers"] ?? "").toLowerCase();
    // The preflight need not expose headers; the POST's answer must (checked by the app's test).
    assert.ok(exposed === "" || exposed.includes("grpc-status"), exposed);
  });

  it("refuses a CORS preflight from an unlisted origin", async () => {
    const answer = await preflight(at.gateway, "https://evil.example");
    // Without Access-Control-Allow-Origin the browser refuses to send the call.
    assert.equal(answer.headers["access-control-allow-origin"], undefined);
  });

  it("decodes ErrorInfo and BadRequest field violations from grpc-status-details-bin", async () => {
    const failure = await refusal(
      clients(at.gateway, first.token).scheduling.bookAppointment({
        patient: first.patient,
        slot: "not-a-slot",
      }),
    );
    assert.equal(failure.code, Code.InvalidArgument);
    assert.ok(failure.domain, "no ErrorInfo domain");
    assert.ok(failure.reason, "no ErrorInfo reason");
    assert.deepEqual(
      failure.fieldViolations.map((violation) => violation.field),
      ["slot"],
    );
  });

  it("decodes the sign-in refusal of a wrong code", async () => {
    const { iam } = clients(at.gateway);
    const started = await iam.startPatientSignIn({ phone: at.phones[1] });
    const wrong = wrongCode(lastCode(at.codesFile, at.phones[1]));
    const failure = await refusal(
      iam.completePatientSignIn({ signIn: started.signIn, code: wrong }),
    );
    assert.equal(failure.codeName, "UNAUTHENTICATED");
    assert.equal(failure.reason, "SIGN_IN_CODE_INVALID");
  });

  it("locks a phone out after too many wrong codes and says how long (RetryInfo)", async () => {
    const { iam } = clients(at.gateway);
    const phone = at.phones[2];
    const started = await iam.startPatientSignIn({ phone });
    const code = lastCode(at.codesFile, phone);
    let limited;
    for (let attempt = 1; attempt <= 10 && !limited; attempt++) {
      const failure = await refusal(
        iam.completePatientSignIn({ signIn: started.signIn, code: wrongCode(code) }),
      );
      if (failure.codeName === "RESOURCE_EXHAUSTED") limited = failure;
      else assert.equal(failure.reason, "SIGN_IN_CODE_INVALID", `attempt ${attempt}`);
    }
    assert.ok(limited, "ten wrong codes in a row were never refused as too many");
    assert.equal(limited.reason, "SIGN_IN_RATE_LIMITED");
    assert.ok((limited.retryAfterMs ?? 0) > 0, "no RetryInfo delay");
    // The right code does not help until the wait has passed.
    const again = await refusal(iam.completePatientSignIn({ signIn: started.signIn, code }));
    assert.equal(again.codeName, "RESOURCE_EXHAUSTED");
  });

  it("refuses an expired code as SIGN_IN_CODE_EXPIRED", async () => {
    const { iam } = clients(at.gateway);
    const phone = at.phones[3];
    const started = await iam.startPatientSignIn({ phone });
    const code = lastCode(at.codesFile, phone);
    await sleep(at.codeTtlMs + 1_000);
    const failure = await refusal(iam.completePatientSignIn({ signIn: started.signIn, code }));
    assert.equal(failure.codeName, "UNAUTHENTICATED");
    assert.equal(failure.reason, "SIGN_IN_CODE_EXPIRED");
  });
});
