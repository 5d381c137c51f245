"""Copies the browser test's screenshots (pinned frontend) into docs/screenshots/ for the README, as small JPEGs,
and each workflow's thumbnail for ComfyUI's Templates browser into examples_workflows/<name>.jpg.

    make screenshots        (runs the browser tests first)
"""

import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SOURCE, DEST = REPO / "test-output" / "0.3.75", REPO / "docs" / "screenshots"
WORKFLOWS = REPO / "examples_workflows"


def save_thumbnail(image: Image.Image, name: str):
    """The Templates browser's card image (the frontend shows it about 300 px wide)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((480, 300))
    thumb.save(WORKFLOWS / f"{name}.jpg", quality=70, optimize=True)


def main():
    DEST.mkdir(parents=True, exist_ok=True)
    shots = sorted(SOURCE.glob("workflow-*-pinned.png")) + sorted(SOURCE.glob("token-picker-*-pinned.png"))
    if not shots:
        sys.exit("no screenshots in test-output/0.3.75/: run the browser tests first")
    for shot in shots:
        name = shot.stem.removeprefix("workflow-").removesuffix("-pinned")
        image = Image.open(shot).convert("RGB")
        if (WORKFLOWS / f"{name}.json").is_file():
            save_thumbnail(image, name)
        image.thumbnail((1200, 1200))
        image.save(DEST / f"{name}.jpg", quality=80, optimize=True)
        print(f"wrote {DEST / (name + '.jpg')}")


if __name__ == "__main__":
    main()
