// The patient web app's entry: picks the language, builds the clients on the page's own origin
// (the gateway serves both the app and the API) and switches between sign-in and the home page.
import { createBrowserTransport } from "../../src/client/browser.js";
import { createHisClients } from "../../src/client/index.js";
import type { App } from "./app.js";
import { homeView } from "./home.js";
import { clearSession, loadSession, saveSession, type Session } from "./session.js";
import { signInView } from "./signin.js";
import { chooseLocale } from "./text.js";

const { text, locale } = chooseLocale(navigator.languages);
const storage = window.sessionStorage;
const main = document.getElementById("main") as HTMLElement;
const signOutButton = document.getElementById("sign-out") as HTMLButtonElement;

const app: App = {
  text,
  locale,
  clients: createHisClients(
    createBrowserTransport({
      baseUrl: window.location.origin,
      token: () => loadSession(storage)?.token,
    }),
  ),
  session: () => loadSession(storage),
  signedIn(session: Session) {
    saveSession(storage, session);
    show();
  },
  signedOut(notice?: string) {
    clearSession(storage);
    show(notice);
  },
};

function show(notice?: string): void {
  const session = app.session();
  signOutButton.hidden = !session;
  main.replaceChildren(session ? homeView(app) : signInView(app, notice));
  // Move the focus to the new view, so a screen reader starts reading there.
  main.focus();
}

document.documentElement.lang = text.lang;
document.title = text.title;
(document.getElementById("brand") as HTMLElement).textContent = text.brand;
signOutButton.textContent = text.signOut;
signOutButton.addEventListener("click", () => app.signedOut());
show();
