// Leakless frontend extension: shows a node's text result (token table, report) on the node after it runs.
// Uses only the stable extension API (registerExtension, beforeRegisterNodeDef, onExecuted).
import { app } from "../../scripts/app.js";

// Node id -> minimum size of the node once its text is shown.
const TEXT_NODES = new Map([
  ["LeaklessTokenInspector", [520, 320]],
  ["LeaklessRedundantTokenMask", [420, 0]],
  ["LeaklessLeakPatch", [420, 0]],
]);

function showText(node, text, [minWidth, minHeight]) {
  let widget = node.widgets?.find((w) => w.name === "leakless_table");
  if (!widget) {
    const pre = document.createElement("textarea");
    pre.readOnly = true;
    pre.className = "leakless-token-table";
    pre.style.cssText = "font-family: monospace; font-size: 11px; white-space: pre; overflow: auto; width: 100%;";
    widget = node.addDOMWidget("leakless_table", "leakless_table", pre, { serialize: false, getValue: () => pre.value, setValue: () => {} });
  }
  widget.element.value = text;
  node.setSize([Math.max(node.size[0], minWidth), Math.max(node.size[1], minHeight)]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "leakless.core",
  async setup() {
    window.__leakless_loaded = true;
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const minSize = TEXT_NODES.get(nodeData.name);
    if (!minSize) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text?.[0];
      if (typeof text === "string") showText(this, text, minSize);
    };
  },
});
