// What every view of the app shares: the words, the service clients, the session and how to move
// between signed in and signed out.
import type { HisClients } from "../../src/client/index.js";
import type { Session } from "./session.js";
import type { Text } from "./text.js";

export interface App {
  readonly text: Text;
  /** The phone's locale for dates and times (en-GB writes "Mon 7 Dec", en-US "Mon, Dec 7"). */
  readonly locale: string;
  readonly clients: HisClients;
  /** The signed-in patient, or undefined once the token has expired. */
  session(): Session | undefined;
  signedIn(session: Session): void;
  /** Ends the session and shows sign-in, with `notice` (e.g. why) above the form. */
  signedOut(notice?: string): void;
}

/** "Mon 8 Dec, 09:30" in the phone's locale and time zone. */
export function formatWhen(locale: string, date: Date | undefined): string {
  if (!date) return "";
  return new Intl.DateTimeFormat(locale, {
    weekday: "short",
    day: "numeric",
    month: "short",
    hour: "2-digit",
    minute: "2-digit",
  }).format(date);
}
