"""Server route for the token picker: POST /leakless/tokenize {"text", "family"} -> the prompt's tokens per encoder.

Uses the tokenizers ComfyUI ships (no model weights), built once per family. Registered only when ComfyUI runs its
server (PromptServer.instance exists); headless runs have no routes.
"""

from __future__ import annotations

import asyncio
import functools
import sys

from .alignment import align

ROUTE = "/leakless/tokenize"
MAX_CHARS = 20_000
FAMILIES = ("flux", "sdxl", "sd15")


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
    number of tokens it has in each encoder."""
    alignment = align(text, _tokenizer(family))
    encoders = []
    for key, enc in alignment.encoders.items():
        tokens = [{"position": t.position, "text": t.text, "word": t.word, "kind": t.kind, "weight": t.weight,
                   "span": list(t.span) if t.span else None} for t in enc.tokens if t.kind != "pad"]
        encoders.append({"key": key, "name": enc.name, "length": enc.length, "exact": enc.exact, "tokens": tokens})
    words = []
    for start, end in alignment.word_spans:
        a, b = alignment.plain_to_prompt[start], alignment.plain_to_prompt[end - 1] + 1
        counts = {enc.key: len(enc.positions_in(a, b)) for enc in alignment.encoders.values()}
        words.append({"word": alignment.plain[start:end], "span": [a, b], "tokens": counts})
    return {"family": family, "encoders": encoders, "words": words}


def _error(web, status: int, message: str):
    return web.json_response({"error": message}, status=status)


async def _tokenize(request):
    from aiohttp import web

    try:
        body = await request.json()
    except ValueError:
        return _error(web, 400, "the body must be JSON: {\"text\": \"...\", \"family\": \"flux\"|\"sdxl\"|\"sd15\"}")
    if not isinstance(body, dict):
        return _error(web, 400, "the body must be a JSON object with 'text' and 'family'")
    text, family = body.get("text"), body.get("family")
    if not isinstance(text, str):
        return _error(web, 400, "'text' must be a string")
    if len(text) > MAX_CHARS:
        return _error(web, 400, f"'text' is {len(text)} characters; the limit is {MAX_CHARS}")
    if family not in FAMILIES:
        return _error(web, 400, f"'family' must be one of {', '.join(FAMILIES)}; got {family!r}")
    payload = await asyncio.to_thread(tokenize_payload, text, family)
    return web.json_response(payload)


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
