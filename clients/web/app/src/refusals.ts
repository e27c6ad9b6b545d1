// What the patient is told when a call is refused, decided from the decoded error (its gRPC code
// and ErrorInfo reason, as documented on each rpc in protos/), never from the message text.
import { Code } from "@connectrpc/connect";
import type { HisFailure } from "../../src/client/index.js";
import { waitInWords, type Text } from "./text.js";

export interface Refusal {
  /** The sentence for the patient. */
  readonly message: string;
  /** True when the session is over (no token, or it expired): the app goes back to sign-in. */
  readonly signedOut: boolean;
}

/** A refusal of StartPatientSignIn or CompletePatientSignIn. */
export function signInRefusal(text: Text, failure: HisFailure, codeLength: number): Refusal {
  const say = (message: string): Refusal => ({ message, signedOut: false });
  switch (failure.reason) {
    case "SIGN_IN_CODE_INVALID":
      return say(text.codeWrong);
    case "SIGN_IN_CODE_EXPIRED":
      return say(text.codeExpired);
    case "SIGN_IN_RATE_LIMITED":
      return say(text.tooManyAttempts(waitInWords(text, failure.retryAfterMs ?? 60_000)));
  }
  if (failure.code === Code.InvalidArgument) {
    const field = failure.fieldViolations[0]?.field ?? "";
    return say(field.endsWith("code") ? text.codeInvalid(codeLength) : text.phoneInvalid);
  }
  if (failure.code === Code.Unimplemented) return say(text.signInOff);
  return callRefusal(text, failure);
}

/** A refusal of any call a signed-in patient makes. */
export function callRefusal(text: Text, failure: HisFailure): Refusal {
  const say = (message: string): Refusal => ({ message, signedOut: false });
  switch (failure.reason) {
    case "SLOT_FULL":
    case "SLOT_BLOCKED":
      return say(text.slotTaken);
    case "SLOT_ENDED":
      return say(text.slotEnded);
    case "PATIENT_DOUBLE_BOOKED":
      return say(text.doubleBooked);
    case "ETAG_MISMATCH":
      return say(text.changedMeanwhile);
  }
  switch (failure.code) {
    case Code.Unauthenticated:
      // No token, an expired or revoked one: the gateway (jwt_authn) or the service refused it.
      return { message: text.sessionEnded, signedOut: true };
    case Code.PermissionDenied:
      return say(text.notAllowed);
    case Code.ResourceExhausted:
      return say(
        failure.retryAfterMs === undefined
          ? text.tooManyRequests
          : text.tooManyAttempts(waitInWords(text, failure.retryAfterMs)),
      );
    case Code.Unavailable:
      // The gateway's own rate limit (HTTP 429) is not an outage: the patient only has to wait.
      return say(failure.httpStatus === 429 ? text.tooManyRequests : text.unreachable);
    case Code.DeadlineExceeded:
    case Code.Canceled:
      return say(text.unreachable);
    case Code.Aborted:
      return say(text.slotTaken);
    case Code.Unknown:
      // No ErrorInfo: the call never reached a service (no network, or something that is not the
      // gateway answered). A service's own failures carry a domain.
      return say(failure.domain ? text.failed(failure.codeName) : text.unreachable);
    default:
      return say(text.failed(failure.codeName));
  }
}
