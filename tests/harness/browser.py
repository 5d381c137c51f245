"""Debian's Chromium driven headless by Playwright (no browser download), pointed at a live ComfyUI server."""

import json
import os
import shutil
import urllib.request
from contextlib import contextmanager

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def chromium_path():
    for candidate in (os.environ.get("LEAKLESS_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


# Records every console warning or error whose call stack passes through the pack's JS (/extensions/leakless/),
# whoever prints it (the frontend's deprecation warnings print from its own code), and uncaught errors thrown there.
PACK_CONSOLE = """(() => {
  Error.stackTraceLimit = Math.max(Error.stackTraceLimit, 100);
  const seen = (window.__leakless_console = []);
  const fromPack = (stack) => (stack ?? "").includes("/extensions/leakless/");
  for (const level of ["warn", "error"]) {
    const original = console[level];
    console[level] = function (...args) {
      if (fromPack(new Error().stack)) seen.push(`${level}: ${args.map(String).join(" ")}`);
      return original.apply(this, args);
    };
  }
  window.addEventListener("error", (e) => { if (fromPack(e.error?.stack)) seen.push(`error: ${e.message}`); });
  window.addEventListener("unhandledrejection", (e) => {
    if (fromPack(e.reason?.stack)) seen.push(`unhandled: ${e.reason}`);
  });
})()"""


def pack_console(page):
    """The console warnings and errors the pack's JS caused so far on `page` (see PACK_CONSOLE)."""
    return page.evaluate("() => window.__leakless_console")


@contextmanager
def comfy_page(server, console=None):
    """A page with the ComfyUI frontend loaded and the Leakless extension running."""
    from playwright.sync_api import sync_playwright

    # Mark the first-run template browser as seen, or it covers the canvas.
    req = urllib.request.Request(server.url + "/settings/Comfy.TutorialCompleted", data=json.dumps(True).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).close()  # noqa: S310 - loopback only
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            if console is not None:
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.add_init_script(PACK_CONSOLE)
            page.goto(server.url + "/", wait_until="domcontentloaded")
            page.wait_for_selector("#graph-canvas", timeout=90_000)
            page.wait_for_function("() => window.__leakless_loaded === true", timeout=60_000)
            # litegraph prints each deprecation once per page, whoever calls first (often the frontend itself):
            # repeat them, so that the pack's own calls show up (PACK_CONSOLE).
            page.evaluate("() => { if ('alwaysRepeatWarnings' in LiteGraph) LiteGraph.alwaysRepeatWarnings = true; }")
            yield page
        finally:
            browser.close()
