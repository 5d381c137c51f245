// Leakless frontend extension: shows the token table on the Token Inspector node after it runs.
// Uses only the stable extension API (registerExtension, beforeRegisterNodeDef, onExecuted).
import { app } from "../../scripts/app.js";

const TABLE_NODES = new Set(["LeaklessTokenInspector"]);

function showTable(node, text) {
  let widget = node.widgets?.find((w) => w.name === "leakless_table");
  if (!widget) {
    const pre = document.createElement("textarea");
    pre.readOnly = true;
    pre.className = "leakless-token-table";
    pre.style.cssText = "font-family: monospace; font-size: 11px; white-space: pre; overflow: auto; width: 100%;";
    widget = node.addDOMWidget("leakless_table", "leakless_table", pre, { serialize: false, getValue: () => pre.value, setValue: () => {} });
  }
  widget.element.value = text;
  node.setSize([Math.max(node.size[0], 520), Math.max(node.size[1], 320)]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "leakless.core",
  async setup() {
    window.__leakless_loaded = true;
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TABLE_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text?.[0];
      if (typeof text === "string") showTable(this, text);
    };
  },
});
