// A small, safe markdown subset for model output: fenced code blocks, headings, lists, quotes, paragraphs,
// and inline code, bold, italic and http(s) links. It builds DOM nodes and puts all text in as text nodes,
// so HTML in the output (<script>, <img onerror=...>) shows as the characters it is and never runs.
// Half-finished markup while streaming (an open ``` fence) renders as what it will become.

import { el } from "./dom.js";

const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
// one alternative per inline form; code first so nothing inside backticks is interpreted
const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|\*(?=[^\s*])([^*]*?[^\s*])\*|(?<![\w])_(?=\S)([^_]*?\S)_(?![\w])|\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g;

export function inline(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1]) out.push(el("code", { text: m[2] }));
    else if (m[3] !== undefined) out.push(el("strong", {}, inline(m[3])));
    else if (m[4] !== undefined) out.push(el("em", {}, inline(m[4])));
    else if (m[5] !== undefined) out.push(el("em", {}, inline(m[5])));
    else out.push(el("a", { href: m[7], target: "_blank", rel: "noopener noreferrer nofollow" }, inline(m[6])));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function withBreaks(lines) {
  const out = [];
  lines.forEach((line, i) => {
    if (i) out.push(el("br"));
    out.push(...inline(line));
  });
  return out;
}

function codeBlock(lines, lang) {
  const code = el("code", { text: lines.join("\n") });
  const copy = el("button", { type: "button", class: "copy", text: "copy" });
  copy.addEventListener("click", () => navigator.clipboard?.writeText(code.textContent));
  return el("div", { class: "code-block" },
    el("div", { class: "code-head" }, el("span", { text: lang || "code" }), copy),
    el("pre", {}, code));
}

export function render(text) {
  const lines = text.split("\n");
  const frag = document.createDocumentFragment();
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i++; // the closing fence (or the end of a still-streaming block)
      frag.append(codeBlock(body, fence[2]));
      continue;
    }
    if (!line.trim()) { i++; continue; }
    const heading = line.match(HEADING);
    if (heading) {
      frag.append(el(`h${Math.min(heading[1].length + 2, 6)}`, {}, inline(heading[2])));
      i++;
      continue;
    }
    if (ITEM.test(line)) {
      const ordered = /^\s*\d/.test(line);
      const list = el(ordered ? "ol" : "ul");
      while (i < lines.length && ITEM.test(lines[i]) && /^\s*\d/.test(lines[i]) === ordered) {
        list.append(el("li", {}, inline(lines[i].match(ITEM)[2])));
        i++;
      }
      frag.append(list);
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].match(QUOTE)[1]);
      frag.append(el("blockquote", {}, withBreaks(quoted)));
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i])
           && !ITEM.test(lines[i]) && !QUOTE.test(lines[i])) para.push(lines[i++]);
    frag.append(el("p", {}, withBreaks(para)));
  }
  return frag;
}
