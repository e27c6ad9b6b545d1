// The web client of HIS Mesh: generated messages and services (../gen), one token interceptor,
// typed clients over any transport, and the decoded error model. The browser transport lives in
// ./browser.ts so that Node callers do not pull connect-web in.
export { bearerToken, type TokenSource } from "./auth.js";
export { createHisClients, type HisClients } from "./clients.js";
export {
  badField,
  decodeFailure,
  grpcCodeName,
  type FieldViolation,
  type HisFailure,
} from "./errors.js";
