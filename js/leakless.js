// Leakless frontend extension.
// - Shows a node's text result (token table, report) on the node after it runs.
// - Token picker: on the nodes that take words of the prompt (items, entities, groups, selections), shows the
//   prompt's tokens as chips per encoder (from POST /leakless/tokenize) and writes clicked words into the input
//   in the node's syntax. The text input keeps working by hand; without the route the picker says so and stays out
//   of the way.
// Uses only the stable extension API (registerExtension, beforeRegisterNodeDef, onNodeCreated, onExecuted).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

// Node id -> minimum size of the node once its text is shown.
const TEXT_NODES = new Map([
  ["LeaklessTokenInspector", [520, 320]],
  ["LeaklessRedundantTokenMask", [420, 0]],
  ["LeaklessLeakPatch", [420, 0]],
  ["LeaklessDeLeakerMasks", [320, 0]],
  ["LeaklessHeatmapShow", [320, 0]],
]);

// Node id -> the input the picker writes, how it writes it, and the model family to tokenize for by default.
const PICKER_NODES = new Map([
  ["LeaklessTokenTrace", { input: "selection", syntax: "list", family: "flux" }],
  ["LeaklessRedundantTokenMask", { input: "items", syntax: "items", family: "flux" }],
  ["LeaklessLeakPatch", { input: "items", syntax: "items", family: "flux" }],
  ["LeaklessDeLeakerEncode", { input: "entities", syntax: "list", family: "flux" }],
  ["LeaklessHeatmapEncode", { input: "words", syntax: "list", family: "flux" }],
  ["LeaklessToMeEncode", { input: "groups", syntax: "groups", family: "sdxl" }],
]);
// The model families, from GET /leakless/families (nodes/families.py is the one list), fetched once.
let familiesRequest = null;
function families() {
  familiesRequest ??= api.fetchApi("/leakless/families").then((r) => (r.ok ? r.json() : [])).catch(() => []);
  return familiesRequest;
}

// The family of the CLIP feeding `node`, read from its loader's `type` widget (CLIPLoader, DualCLIPLoader, ...),
// or null when the loader says nothing (a checkpoint serves SDXL and SD1.5 alike) or names several families.
function familyFromLoader(node, list) {
  const source = linkedNode(node, "clip");
  if (!source) return null;
  const type = source.widgets?.find((w) => w.name === "type")?.value ?? "";
  const matches = list.filter((f) => f.available && f.loaders.some(([loader, t]) => loader === source.type && t === type));
  return matches.length === 1 ? matches[0].id : null;
}

function showText(node, text, [minWidth, minHeight]) {
  let widget = node.widgets?.find((w) => w.name === "leakless_table");
  if (!widget) {
    const pre = document.createElement("textarea");
    pre.readOnly = true;
    pre.className = "leakless-token-table";
    pre.style.cssText = "font-family: monospace; font-size: 11px; white-space: pre; overflow: auto; width: 100%;" +
      "min-height: 120px;";  // Nodes 2.0 sizes the element by its content, not by node.setSize
    widget = node.addDOMWidget("leakless_table", "leakless_table", pre, { serialize: false, getValue: () => pre.value, setValue: () => {} });
  }
  widget.element.value = text;
  node.setSize([Math.max(node.size[0], minWidth), Math.max(node.size[1], minHeight)]);
  node.setDirtyCanvas?.(true, true);
}

// The node linked to `node`'s input `name`, or null (getInputNode: in every frontend tested; reading input.link
// is deprecated from 1.5x on).
function linkedNode(node, name) {
  const slot = node.inputs?.findIndex((i) => i.name === name) ?? -1;
  return slot >= 0 && node.graph ? node.getInputNode(slot) ?? null : null;
}

// The prompt text of a node: its own "text" widget, or the string widget of the node linked to its "text" input.
function promptOf(node) {
  const widget = linkedNode(node, "text")?.widgets?.find((w) => typeof w.value === "string");
  if (widget) return widget.value;
  const own = node.widgets?.find((w) => w.name === "text");
  return typeof own?.value === "string" ? own.value : "";
}

// The new input value after picking `word` (`extend`: shift-click, i.e. a longer phrase or, for groups, a new group).
export function pickInto(value, word, syntax, extend) {
  const text = (value ?? "").replace(/\s+$/, "");
  if (syntax === "groups") {  // "noun: attribute, attribute", one group per line
    const lines = text ? text.split("\n") : [];
    const last = lines.pop() ?? "";
    if (!last) return [...lines, `${word}: `].join("\n");
    if (extend) return [...lines, last, `${word}: `].join("\n");
    const colon = last.indexOf(":");
    if (colon < 0) return [...lines, `${last}: ${word}`].join("\n");
    const attributes = last.slice(colon + 1).trim();
    return [...lines, `${last.slice(0, colon)}: ${attributes ? `${attributes}, ${word}` : word}`].join("\n");
  }
  if (extend) return text ? `${text} ${word}` : word;
  // A number would be read as a token position, and , ; # : as syntax: such a word is written in double quotes.
  const written = /^\d+(\s*-\s*\d+)?$|[,;#:]/.test(word) ? `"${word}"` : word;
  if (!text) return written;
  const separator = syntax === "items" ? "\n" : ", ";
  return `${text}${separator}${written}`;
}

function setWidget(node, name, value) {
  const widget = node.widgets?.find((w) => w.name === name);
  if (!widget) return;
  widget.value = value;
  widget.callback?.(value);
  node.setDirtyCanvas?.(true, true);
}

function chip(label, title, className) {
  const el = document.createElement("span");
  el.textContent = label;
  el.title = title;
  el.className = className;
  el.style.cssText = "display:inline-block;margin:1px 2px;padding:0 4px;border-radius:4px;cursor:pointer;" +
    "font:11px monospace;background:#3a3f4b;color:#ddd;border:1px solid #555;";
  return el;
}

function renderTokens(box, data, node, spec) {
  box.replaceChildren();
  // Payload (nodes/alignment.py PromptAlignment.payload): each word once; per encoder one array per token field,
  // "word" being the index of the token's word in data.words (null for start/end tokens).
  for (const encoder of data.encoders) {
    const row = document.createElement("div");
    row.className = "leakless-picker-encoder";
    row.dataset.encoder = encoder.key;
    const name = document.createElement("b");
    name.textContent = `${encoder.name}: `;
    name.style.cssText = "font:11px sans-serif;color:#aaa;";
    row.append(name);
    encoder.position.forEach((position, i) => {
      const info = data.words[encoder.word[i]];
      const word = info?.word ?? "";
      const multi = info && info.tokens[encoder.key] > 1;
      const el = chip(encoder.text[i].replace("</w>", "").replace("\u2581", "_"),
        `position ${position}${word ? ` · word '${word}'` : ""}${multi ? " · multi-token word" : ""}`,
        `leakless-chip${word ? " leakless-word" : " leakless-special"}${multi ? " leakless-multi" : ""}`);
      el.dataset.word = word;
      el.dataset.position = position;
      if (multi) el.style.borderColor = "#d9a441";
      if (!word) el.style.opacity = "0.5";
      else el.onclick = (event) => {
        const current = node.widgets?.find((w) => w.name === spec.input)?.value ?? "";
        setWidget(node, spec.input, pickInto(current, word, spec.syntax, event.shiftKey));
      };
      row.append(el);
    });
    box.append(row);
  }
}

function addPicker(node, spec) {
  const root = document.createElement("div");
  root.className = "leakless-picker";
  root.style.cssText = "width:100%;font:11px sans-serif;color:#ccc;overflow:auto;max-height:220px;";
  const bar = document.createElement("div");
  const family = document.createElement("select");
  family.className = "leakless-picker-family";
  family.append(new Option(spec.family, spec.family, true, true));
  families().then((list) => {
    if (!list.length) return;
    family.replaceChildren(...list.map((f) => {
      const option = new Option(f.name, f.id, f.id === spec.family, f.id === spec.family);
      option.disabled = !f.available;
      option.title = f.available ? f.note : f.reason;
      return option;
    }));
    // Resolved after the graph that created the node has linked it: the loader's `type` is known by then.
    family.value = familyFromLoader(node, list) ?? family.value;
  });
  const show = document.createElement("button");
  show.className = "leakless-picker-show";
  show.textContent = "Show tokens";
  const hint = document.createElement("span");
  hint.className = "leakless-picker-hint";
  hint.textContent = spec.syntax === "groups"
    ? " click: noun, then its attributes; shift-click: new group"
    : " click: add a word; shift-click: extend the last phrase";
  bar.append(family, show, hint);
  const box = document.createElement("div");
  box.className = "leakless-picker-tokens";
  root.append(bar, box);
  show.onclick = async () => {
    box.textContent = "…";
    const fromLoader = familyFromLoader(node, await families());
    if (fromLoader) family.value = fromLoader;
    try {
      const response = await api.fetchApi("/leakless/tokenize", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: promptOf(node), family: family.value }),
      });
      const data = await response.json();
      if (!response.ok) throw new Error(data?.error ?? response.statusText);
      renderTokens(box, data, node, spec);
      if (!root.dataset.grown) {  // make room for the chips once; the user can resize the node afterwards
        root.dataset.grown = "1";
        node.setSize([Math.max(node.size[0], 480), node.size[1] + Math.min(260, 48 * data.encoders.length + 60)]);
        node.setDirtyCanvas?.(true, true);
      }
    } catch (error) {
      box.textContent = `Token picker unavailable (${error.message}); type in '${spec.input}' by hand.`;
      box.className = "leakless-picker-tokens leakless-picker-error";
    }
  };
  node.addDOMWidget("leakless_picker", "leakless_picker", root, { serialize: false, getValue: () => undefined, setValue: () => {} });
}

app.registerExtension({
  name: "leakless.core",
  async setup() {
    window.__leakless_loaded = true;
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const minSize = TEXT_NODES.get(nodeData.name);
    if (minSize) {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const text = message?.text?.[0];
        if (typeof text === "string") showText(this, text, minSize);
      };
    }
    const picker = PICKER_NODES.get(nodeData.name);
    if (picker) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        addPicker(this, picker);
        return result;
      };
    }
  },
});
