// The error decoding on its own, without a stack: details as the Python servers attach them
// (google.rpc.ErrorInfo, BadRequest, RetryInfo packed in grpc-status-details-bin).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { badField, decodeFailure, grpcCodeName } from "../src/client/index.js";
import {
  BadRequestSchema,
  BadRequest_FieldViolationSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "../src/gen/google/rpc/error_details_pb.js";

describe("decodeFailure", () => {
  it("reads reason, domain, metadata, field violations and the retry delay", () => {
    const error = new ConnectError("too many wrong codes", Code.ResourceExhausted, undefined, [
      {
        desc: ErrorInfoSchema,
        value: { reason: "SIGN_IN_RATE_LIMITED", domain: "iam.his", metadata: { scope: "phone" } },
      },
      {
        desc: BadRequestSchema,
        value: {
          fieldViolations: [
            create(BadRequest_FieldViolationSchema, { field: "code", description: "6 digits" }),
          ],
        },
      },
      { desc: RetryInfoSchema, value: { retryDelay: { seconds: 90n, nanos: 500_000_000 } } },
    ]);
    // Through the wire form: the trailers a gRPC server sends (grpc-status-details-bin is a
    // serialized google.rpc.Status), read back as the grpc-web transport reads them.
    const trailers = setTrailerStatus(new Headers(), error);
    assert.ok(trailers.get("grpc-status-details-bin"));
    const failure = decodeFailure(findTrailerError(trailers));
    assert.equal(failure.codeName, "RESOURCE_EXHAUSTED");
    assert.equal(failure.message, "too many wrong codes");
    assert.equal(failure.reason, "SIGN_IN_RATE_LIMITED");
    assert.equal(failure.domain, "iam.his");
    assert.deepEqual(failure.metadata, { scope: "phone" });
    assert.equal(badField(failure), "code");
    assert.equal(failure.retryAfterMs, 90_500);
  });

  it("leaves the details out when there are none", () => {
    const failure = decodeFailure(new ConnectError("no route", Code.Unimplemented));
    assert.equal(failure.codeName, "UNIMPLEMENTED");
    assert.equal(failure.reason, undefined);
    assert.deepEqual(failure.fieldViolations, []);
    assert.equal(failure.retryAfterMs, undefined);
  });

  it("keeps the HTTP status of the gateway's plain refusals", () => {
    const trailers = new Headers({ "content-type": "text/plain" });
    const limited = decodeFailure(new ConnectError("HTTP 429", Code.Unavailable, trailers));
    assert.equal(limited.httpStatus, 429);
    assert.equal(
      decodeFailure(new ConnectError("slot full", Code.FailedPrecondition)).httpStatus,
      undefined,
    );
  });

  it("turns anything thrown into a failure", () => {
    assert.equal(decodeFailure(new TypeError("fetch failed")).codeName, "UNKNOWN");
  });
});

describe("grpcCodeName", () => {
  it("spells codes as gRPC does", () => {
    assert.equal(grpcCodeName(Code.FailedPrecondition), "FAILED_PRECONDITION");
    assert.equal(grpcCodeName(Code.Unauthenticated), "UNAUTHENTICATED");
    assert.equal(grpcCodeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
  });
});
