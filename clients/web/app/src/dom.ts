// A few lines of DOM building instead of a framework: the app has three small views.

type Child = Node | string | false | undefined;

/** Creates an element with properties, attributes (`attrs`) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<Omit<HTMLElementTagNameMap[K], "style">> & { attrs?: Record<string, string> } = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const { attrs, ...rest } = props;
  const element = Object.assign(document.createElement(tag), rest);
  for (const [name, value] of Object.entries(attrs ?? {})) element.setAttribute(name, value);
  for (const child of children) if (child) element.append(child);
  return element;
}

/** A live region: screen readers announce what is put into it. Errors are alerts. */
export function messageBox(kind: "error" | "info"): HTMLParagraphElement {
  return h("p", {
    className: `message ${kind}`,
    attrs: kind === "error" ? { role: "alert" } : { role: "status", "aria-live": "polite" },
  });
}

/** Runs `work` with `button` disabled, so a double tap cannot send a call twice. */
export async function busy(button: HTMLButtonElement, work: () => Promise<void>): Promise<void> {
  button.disabled = true;
  try {
    await work();
  } finally {
    button.disabled = false;
  }
}
