"""Server routes for the token picker: POST /leakless/tokenize {"text", "family"} -> the prompt's tokens per
encoder; GET /leakless/families -> the model families (nodes/families.py) and whether the picker can tokenize each.

Uses the tokenizers ComfyUI ships (no model weights), built once per family. Registered only when ComfyUI runs its
server (PromptServer.instance exists); headless runs have no routes.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import sys

from ..errors import QUOTED_CHARS, quoted
from ..registry.families import BY_ID, FAMILIES
from ..text.alignment import MAX_CHARS, PromptNestingError, align

ROUTE = "/leakless/tokenize"
FAMILIES_ROUTE = "/leakless/families"
# The payload lists each word once and each token's fields once, so it grows linearly: at most about 100 bytes per
# character (every UTF-8 byte of a character can be a CLIP token); the byte cap only guards that promise.
MAX_BYTES = 4_000_000
USAGE = 'the body must be JSON: {"text": "...", "family": "<id from GET /leakless/families>"}'


class NoTokenizer(ValueError):
    """The family's tokenizer cannot be built without its model file, or this ComfyUI lacks it."""


@functools.lru_cache(maxsize=len(FAMILIES))
def _tokenizer(family_id: str):
    family = BY_ID[family_id]
    if not family.tokenizer:
        raise NoTokenizer(f"{family.name} reads its tokenizer from the text encoder file, so the picker cannot "
                          "tokenize without it: use Leakless Token Inspector on the loaded CLIP")
    module, name = family.tokenizer.split(":")
    try:
        return getattr(importlib.import_module(module), name)()
    except (ImportError, AttributeError):
        raise NoTokenizer(f"this ComfyUI has no {family.name} tokenizer ({family.tokenizer}); {family.name} needs "
                          f"ComfyUI {family.comfyui} or newer") from None


def families_payload() -> list[dict]:
    """Every family with `available`: whether the picker can tokenize for it on this ComfyUI."""
    out = []
    for f in FAMILIES:
        try:
            _tokenizer(f.id)
            available, reason = True, ""
        except NoTokenizer as e:
            available, reason = False, str(e)
        out.append({**f.payload(), "available": available, "reason": reason})
    return out


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
    if not isinstance(family, str) or family not in BY_ID:
        got = quoted(family) if isinstance(family, str) else repr(family)[:QUOTED_CHARS]
        return _error(web, 400, f"'family' must be one of {', '.join(BY_ID)}; got {got}")
    try:
        data = await asyncio.to_thread(lambda: _encode(tokenize_payload(text, family)))
    except PromptNestingError as e:
        return _error(web, 400, f"'text': {e}")
    except NoTokenizer as e:
        return _error(web, 400, f"'family': {e}")
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
    routes.get(FAMILIES_ROUTE)(_families)


async def _families(request):
    from aiohttp import web

    return web.json_response(await asyncio.to_thread(families_payload))
