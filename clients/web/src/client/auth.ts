// The bearer token every call carries, added by one interceptor so no call site can forget it.
import type { Interceptor } from "@connectrpc/connect";

/** Where the interceptor reads the current access token; undefined sends the call without one. */
export type TokenSource = () => string | undefined;

/**
 * An interceptor that sends `authorization: Bearer <token>` when the source has a token. The token
 * is read on every call (not captured once) so that signing in or out takes effect at once.
 */
export function bearerToken(source: TokenSource): Interceptor {
  return (next) => async (request) => {
    const token = source();
    if (token) {
      request.header.set("authorization", `Bearer ${token}`);
    }
    return next(request);
  };
}
