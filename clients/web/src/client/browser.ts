// The browser's transport: grpc-web over fetch to the gateway, which translates it to gRPC.
import type { Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { bearerToken, type TokenSource } from "./auth.js";

export interface BrowserTransportOptions {
  /** The gateway's origin, e.g. `https://m.hospital.example`; the app uses its own origin. */
  readonly baseUrl: string;
  /** The current access token, read on every call. */
  readonly token: TokenSource;
  /** The deadline of each call; the gateway and the services derive theirs from it. */
  readonly timeoutMs?: number;
}

export function createBrowserTransport(options: BrowserTransportOptions): Transport {
  return createGrpcWebTransport({
    baseUrl: options.baseUrl,
    // The binary format: Envoy's grpc_web filter translates binary grpc-web, not Connect's JSON.
    useBinaryFormat: true,
    interceptors: [bearerToken(options.token)],
    defaultTimeoutMs: options.timeoutMs ?? 10_000,
  });
}
