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
            page.goto(server.url + "/", wait_until="domcontentloaded")
            page.wait_for_selector("#graph-canvas", timeout=90_000)
            page.wait_for_function("() => window.__leakless_loaded === true", timeout=60_000)
            yield page
        finally:
            browser.close()
