// The house error model as a web client sees it: the gRPC code, plus the google.rpc details the
// services attach (grpc-status-details-bin, which the grpc-web gateway passes on as a trailer):
// ErrorInfo (reason, domain, metadata), BadRequest field violations and RetryInfo.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "../gen/google/rpc/error_details_pb.js";

/** One bad field of a request, as the service named it (`patient.phone`, `code`). */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
  readonly reason: string;
}

/** A failed call, decoded. `reason` and the rest are absent when the error carried no details. */
export interface HisFailure {
  /** The gRPC status code (Connect's Code has the gRPC numbering). */
  readonly code: Code;
  /** The code as gRPC spells it, e.g. `FAILED_PRECONDITION`. */
  readonly codeName: string;
  /** The service's message, without Connect's `[code]` prefix. Not for patients' eyes. */
  readonly message: string;
  /** ErrorInfo.reason, the machine-readable UPPER_SNAKE cause, e.g. `SLOT_FULL`. */
  readonly reason?: string;
  /** ErrorInfo.domain: the service that refused, e.g. `scheduling.his`. */
  readonly domain?: string;
  /** ErrorInfo.metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  /** BadRequest field violations, in the order the service gave them. */
  readonly fieldViolations: readonly FieldViolation[];
  /** RetryInfo.retry_delay in milliseconds: how long to wait before asking again. */
  readonly retryAfterMs?: number;
  /**
   * The HTTP status when the gateway itself refused the call with a plain HTTP answer (no gRPC
   * status): 429 from its rate limit, 401 from jwt_authn, 404 off the allow-list.
   */
  readonly httpStatus?: number;
}

/** `FailedPrecondition` → `FAILED_PRECONDITION`, as the protos and the logs spell codes. */
export function grpcCodeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Decodes any error thrown by a call (network failures become UNAVAILABLE or UNKNOWN). */
export function decodeFailure(error: unknown): HisFailure {
  const connectError = ConnectError.from(error);
  const [info] = connectError.findDetails(ErrorInfoSchema);
  const [retry] = connectError.findDetails(RetryInfoSchema);
  const fieldViolations = connectError
    .findDetails(BadRequestSchema)
    .flatMap((badRequest) => badRequest.fieldViolations)
    .map(({ field, description, reason }) => ({ field, description, reason }));
  const delay = retry?.retryDelay;
  // Connect reports an HTTP answer other than 200 without a gRPC status as "HTTP <status>", with
  // the code gRPC's HTTP mapping gives it (429 becomes UNAVAILABLE).
  const http = /^HTTP (\d{3})$/.exec(connectError.rawMessage);
  return {
    code: connectError.code,
    codeName: grpcCodeName(connectError.code),
    message: connectError.rawMessage,
    reason: info?.reason || undefined,
    domain: info?.domain || undefined,
    metadata: { ...(info?.metadata ?? {}) },
    fieldViolations,
    retryAfterMs:
      delay === undefined ? undefined : Number(delay.seconds) * 1000 + delay.nanos / 1_000_000,
    httpStatus: http ? Number(http[1]) : undefined,
  };
}

/** The first violation's field, e.g. to put the focus on the input that was wrong. */
export function badField(failure: HisFailure): string | undefined {
  return failure.fieldViolations[0]?.field;
}
