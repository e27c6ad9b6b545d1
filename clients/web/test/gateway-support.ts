// What the gateway tests share: where the running stack is (from the environment pytest sets up),
// Node's grpc-web transport through the gateway, and patient sign-in with the local sender's code.
import { readFileSync } from "node:fs";
import type { Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { bearerToken, createHisClients, type HisClients } from "../src/client/index.js";

export interface Stack {
  /** The gateway's origin, e.g. `http://127.0.0.1:8443`. */
  readonly gateway: string;
  /** The local sender's file of sign-in codes: `<phone> <code> expires <time>` lines. */
  readonly codesFile: string;
  /**
   * Phone numbers of four different demo patients: two sign in, one is locked out by wrong
   * codes, one lets its code expire.
   */
  readonly phones: readonly [string, string, string, string];
  /** How long a sign-in code lives in this stack (HIS_IAM_SIGN_IN_CODE_TTL_S). */
  readonly codeTtlMs: number;
  /** An origin the gateway's CORS policy lists. */
  readonly allowedOrigin: string;
  /** A staff token that the audit service itself would accept (an auditor's). */
  readonly auditorToken: string;
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: the gateway tests run against a running stack; ` +
        "run them through pytest (tests/e2e/test_web_client.py), which starts `his up` and sets it",
    );
  }
  return value;
}

export function stack(): Stack {
  const [first, second, third, fourth] = required("HIS_TEST_PHONES").split(",");
  if (!first || !second || !third || !fourth) {
    throw new Error("HIS_TEST_PHONES must name four phone numbers");
  }
  return {
    gateway: required("HIS_GATEWAY_URL"),
    codesFile: required("HIS_SIGN_IN_CODES"),
    phones: [first, second, third, fourth],
    codeTtlMs: Number(required("HIS_IAM_SIGN_IN_CODE_TTL_S")) * 1000,
    allowedOrigin: required("HIS_ALLOWED_ORIGIN"),
    auditorToken: required("HIS_AUDITOR_TOKEN"),
  };
}

/** grpc-web over HTTP/1.1, as a browser sends it, with the token when there is one. */
export function transport(gateway: string, token?: string): Transport {
  return createGrpcWebTransport({
    baseUrl: gateway,
    httpVersion: "1.1",
    useBinaryFormat: true,
    interceptors: [bearerToken(() => token)],
    defaultTimeoutMs: 10_000,
  });
}

export function clients(gateway: string, token?: string): HisClients {
  return createHisClients(transport(gateway, token));
}

/** The last code the local sender wrote for `phone` (written before StartPatientSignIn answers). */
export function lastCode(codesFile: string, phone: string): string {
  const lines = readFileSync(codesFile, "utf8").trimEnd().split("\n").reverse();
  for (const line of lines) {
    const [linePhone, code] = line.split(" ");
    if (linePhone === phone && code) return code;
  }
  throw new Error(`no sign-in code for ${phone} in ${codesFile}`);
}

export interface SignedIn {
  readonly token: string;
  readonly patient: string;
}

/** A code that is certainly not `code`: its last digit changed. */
export function wrongCode(code: string): string {
  return code.slice(0, -1) + String((Number(code.at(-1)) + 1) % 10);
}

/** Signs a patient in through the gateway, as the app does. */
export async function signIn(at: Stack, phone: string): Promise<SignedIn> {
  const { iam } = clients(at.gateway);
  const started = await iam.startPatientSignIn({ phone });
  const done = await iam.completePatientSignIn({
    signIn: started.signIn,
    code: lastCode(at.codesFile, phone),
  });
  return { token: done.accessToken, patient: done.patient };
}
