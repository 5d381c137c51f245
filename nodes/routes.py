"""Server route for the token picker: POST /leakless/tokenize {"text", "family"} -> the prompt's tokens per encoder.

Uses the tokenizers ComfyUI ships (no model weights), built once per family. Registered only when ComfyUI runs its
server (PromptServer.instance exists); headless runs have no routes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys

from .alignment import MAX_CHARS, PromptNestingError, align

ROUTE = "/leakless/tokenize"
# The payload lists each word once and each token's fields once, so it grows linearly: at most about 100 bytes per
# character (every UTF-8 byte of a character can be a CLIP token); the byte cap only guards that promise.
MAX_BYTES = 4_000_000
FAMILIES = ("flux", "sdxl", "sd15")
USAGE = 'the body must be JSON: {"text": "...", "family": "flux"|"sdxl"|"sd15"}'


@functools.lru_cache(maxsize=len(FAMILIES))
def _tokenizer(family: str):
    if family == "flux":
        import comfy.text_encoders.flux

        return comfy.text_encoders.flux.FluxTokenizer()
    if family == "sdxl":
        import comfy.sdxl_clip

        return comfy.sdxl_clip.SDXLTokenizer()
    import comfy.sd1_clip

    return comfy.sd1_clip.SD1Tokenizer()


def tokenize_payload(text: str, family: str) -> dict:
    """The prompt's tokens per encoder (start/end tokens kept, padding left out) and its words, each word with the
    number of tokens it has in each encoder (PromptAlignment.payload)."""
    return {"family": family, **align(text, _tokenizer(family)).payload()}


def _encode(payload: dict) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def _error(web, status: int, message: str):
    return web.json_response({"error": message}, status=status)


async def _tokenize(request):
    from aiohttp import web

    try:
        body = await request.json()
    except RecursionError:
        return _error(web, 400, f"the JSON nests too deeply; {USAGE}")
    except (ValueError, UnicodeError):  # UnicodeDecodeError: the body is not UTF-8
        return _error(web, 400, USAGE)
    if not isinstance(body, dict):
        return _error(web, 400, "the body must be a JSON object with 'text' and 'family'")
    text, family = body.get("text"), body.get("family")
    if not isinstance(text, str):
        return _error(web, 400, "'text' must be a string")
    if len(text) > MAX_CHARS:
        return _error(web, 400, f"'text' is {len(text)} characters; the limit is {MAX_CHARS}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return _error(web, 400, f"'text' has a lone surrogate (\\u{ord(text[e.start]):04x}) at character {e.start}; "
                                "send valid Unicode text")
    if family not in FAMILIES:
        return _error(web, 400, f"'family' must be one of {', '.join(FAMILIES)}; got {family!r}")
    try:
        data = await asyncio.to_thread(lambda: _encode(tokenize_payload(text, family)))
    except PromptNestingError as e:
        return _error(web, 400, f"'text': {e}")
    if len(data) > MAX_BYTES:
        return _error(web, 400, f"the tokens of this prompt take {len(data)} bytes; the limit is {MAX_BYTES}: "
                                "shorten the prompt")
    return web.Response(body=data, content_type="application/json")


def register_routes():
    """Adds the route to ComfyUI's server if there is one (called while the pack loads, before ComfyUI installs
    the routes); a second call adds nothing."""
    server = sys.modules.get("server")  # ComfyUI's server module, loaded only when ComfyUI serves
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None:
        return
    routes = instance.routes
    if any(getattr(r, "path", None) == ROUTE for r in routes):
        return
    routes.post(ROUTE)(_tokenize)
