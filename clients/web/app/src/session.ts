// The signed-in patient, kept in sessionStorage: it survives a reload but not closing the tab, so
// a shared phone does not stay signed in. The token itself is never logged or sent anywhere but
// the gateway.

const KEY = "his.session";

export interface Session {
  /** The access token from CompletePatientSignIn. */
  readonly token: string;
  /** The patient, `patients/{id}`. */
  readonly patient: string;
  /** When the token expires, in milliseconds since the epoch. */
  readonly expiresAt: number;
}

export function loadSession(storage: Storage, now: number = Date.now()): Session | undefined {
  try {
    const session = JSON.parse(storage.getItem(KEY) ?? "null") as Session | null;
    if (session && typeof session.token === "string" && session.expiresAt > now) return session;
  } catch {
    // A damaged entry is the same as none.
  }
  storage.removeItem(KEY);
  return undefined;
}

export function saveSession(storage: Storage, session: Session): void {
  storage.setItem(KEY, JSON.stringify(session));
}

export function clearSession(storage: Storage): void {
  storage.removeItem(KEY);
}
