// The one way the page builds markup: elements and text nodes, never an HTML string. Whatever
// a string holds (a model's feature names or vocabulary, generated text, a server's error
// message, a pasted CSV header) it can only ever show as text: the page treats a served model
// and everything it returns as untrusted (docs/security.md). tests/test_security_static.py fails
// on innerHTML and its relatives fed anything but a constant.

const SAFE_URL = /^(https?:\/\/|\/(?!\/)|#)/i; // http(s), same-origin paths, fragments: no script URL

/** ``el("b", {class: "ok", title: "..."}, "text", otherNode, ["more", "children"])``: an element
 * with attributes (never event handlers: listeners are added in code) and children, where a
 * string child becomes a text node and null/undefined/false children are skipped. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (/^on/i.test(k)) throw new Error(`el(): no inline handler ${k}; add a listener`);
    if (k === "href" && !SAFE_URL.test(String(v))) continue; // a link nowhere rather than a script URL
    if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k === "className" ? "class" : k, String(v));
  }
  append(e, children);
  return e;
}

function append(parent, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false || c === "") continue;
    parent.append(c instanceof Node ? c : String(c)); // a string is appended as a text node
  }
}

/** Replace what ``parent`` shows with ``children`` (same rules as :func:`el`). */
export function show(parent, ...children) {
  parent.replaceChildren();
  append(parent, children);
  return parent;
}

/** ``items`` with ``sep`` between them (a separator string or a function returning a node). */
export function join(items, sep) {
  const out = [];
  items.forEach((x, i) => {
    if (i) out.push(typeof sep === "function" ? sep() : sep);
    out.push(x);
  });
  return out;
}
