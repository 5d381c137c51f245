"""ComfyUI glue shared by the patches that read or edit joint attention (DeLeaker, Attention Heatmap).

An APPLY_MODEL wrapper (every model runs it; SD3's MMDiT runs no DIFFUSION_MODEL wrapper) describes each model
call once: the adapter (joint_models.py), the image grid, the text segments and the main blocks' count so far.
The attention override reads it from that call's transformer_options and sees every attention call as one
`AttentionCall`: q, k, v as [B, H, L, D] in text-first order whatever the model's own layout, and `attend`, the
attention that was there before (a chained override or ComfyUI's own), for any rows and (edited) keys.
`install_patch` clones the MODEL with a patch's override, wrapper and per-run state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from . import provenance, run_state
from .errors import LeaklessInputError
from .joint_models import NAMES, CallLayout, JointModel, image_grid, joint_model_of

_ARG_NAMES = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")
CALL_SUFFIX = ".call"  # after a patch's run-state key: the model call in progress, in that call's transformer_options
OUTER_CALL = "leakless_outer_call"  # transformer_options key: this attention call is part of an outer patch's call


def diffusion_model_of(model_patcher):
    return getattr(getattr(model_patcher, "model", None), "diffusion_model", None)


def joint_model(node: str, model_patcher, needs: str = "edits joint text-image attention",
                supported: str = NAMES) -> JointModel:
    """The adapter of a MODEL input; a clear error naming the `supported` models when it has no joint attention."""
    base = getattr(model_patcher, "model", None)
    found = joint_model_of([c.__name__ for c in type(base).__mro__]) if diffusion_model_of(model_patcher) else None
    if found is None:
        name = type(base).__name__ if base is not None else type(model_patcher).__name__
        raise LeaklessInputError(node, "model", f"it {needs}, which this model ({name}) does not have or Leakless "
                                 "cannot reach.", f"connect a model of: {supported}.")
    return found


def check_prompt_family(node: str, entities, families, model_name: str, encode_node: str) -> None:
    """A clear error when the phrases were encoded for another model family than the patched model reads."""
    if entities.family not in families:
        from .families import BY_ID

        raise LeaklessInputError(node, "entities", f"they come from a {BY_ID[entities.family].name} prompt, and the "
                                 f"model is {model_name}.", f"encode the prompt in {encode_node} with this model's "
                                 "own text encoder.")


@dataclass
class ModelCall:
    """One model call, described once by the APPLY_MODEL wrapper and read by every attention call inside it."""

    model: JointModel
    grid: tuple[int, int]
    segments: tuple  # the text part of a main call: (rows, conditioning rows, stream) segments
    n_blocks: int
    n_first: int
    blocks_seen: int = 0  # main attention calls so far (the block index where ComfyUI gives none)
    ran: bool = False  # an override of this patch was reached
    last_outer: object = None  # the outer patch's call whose parts this patch saw last

    @functools.cached_property
    def layout(self) -> CallLayout:  # read by every attention call of the model call: made once
        return CallLayout(sum(s[0] for s in self.segments), self.grid, self.model.image_first)

    def is_main(self, call: AttentionCall) -> bool:
        """A main block's joint attention: self-attention over the whole text and image."""
        length = call.q.shape[2]
        return call.k.shape[2] == length and call.plain_shape and self.layout.is_main(length)

    def next_block(self) -> int:
        self.blocks_seen += 1
        return self.blocks_seen - 1

    def inside_outer(self, call: AttentionCall) -> bool:
        """Whether `call` is part of an outer Leakless patch's edited main call (rows or keys of it): such a call
        is passed on unchanged, and the first part of each counts as that main block."""
        outer = (call.kwargs.get("transformer_options") or {}).get(OUTER_CALL)
        if outer is None:
            return False
        if outer is not self.last_outer:
            self.last_outer = outer
            self.next_block()
        return True


def chains(active, override) -> bool:
    """Whether the attention override in use is `override` or a Leakless override chained over it."""
    for _ in range(64):  # a chain of stacked patches; never a cycle
        if active is None or active is override:
            return active is override
        active = getattr(active, "leakless_previous", None)
    return False


def check_ran(node: str, call: ModelCall, transformer_options, override) -> None:
    """After a model call: a clear error when the patch's override was replaced (a cache node such as EasyCache may
    skip the model's blocks: only an override that replaced ours is an error)."""
    if not call.ran and not chains(transformer_options.get("optimized_attention_override"), override):
        raise LeaklessInputError(
            node, "model", "its attention patch did not run: a node placed after it replaced the model's attention "
            "override without chaining it (ComfyUI's ModelAttentionBackend does that), or the model computes its "
            "attention itself.", f"place ModelAttentionBackend (or the other attention node) before {node}: it "
            "then runs that attention inside its own.")


def describe_call(model: JointModel, base_model, x, c_crossattn, kwargs) -> ModelCall:
    dm = base_model.diffusion_model
    n_blocks, n_first = model.n_blocks(dm)
    llama = kwargs.get(model.llama_stream) if model.llama_stream else None
    context_len = 0 if c_crossattn is None else c_crossattn.shape[1]
    segments = model.text_segments(dm, context_len, None if llama is None else llama.shape[-2])
    return ModelCall(model, image_grid(x.shape, model.patch_size(dm)), segments, n_blocks, n_first)


def apply_model_args(args, kwargs):
    """(x, c_crossattn, transformer_options, extra conds) of an APPLY_MODEL wrapper's call."""
    names = ("x", "t", "c_concat", "c_crossattn", "control", "transformer_options")
    bound = dict(zip(names, args, strict=False))
    extra = {k: v for k, v in kwargs.items() if k not in names}
    bound.update({k: v for k, v in kwargs.items() if k in names})
    return bound["x"], bound.get("c_crossattn"), bound.get("transformer_options") or {}, extra


@dataclass
class AttentionCall:
    """One call of the model's attention as the override receives it, in a text-first [B, H, L, D] view."""

    func: object
    previous: object  # the override this one chains (None: ComfyUI's attention)
    args: tuple
    kwargs: dict
    q: torch.Tensor = field(init=False)
    k: torch.Tensor = field(init=False)
    v: torch.Tensor = field(init=False)
    heads: int = field(init=False)
    mask: torch.Tensor | None = field(init=False)
    order: torch.Tensor | None = field(init=False, default=None)  # text-first order of an image-first call
    _rest: dict = field(init=False)

    def __post_init__(self):
        bound = dict(zip(_ARG_NAMES, self.args, strict=False))
        bound.update(self.kwargs)
        self.heads, self.mask = bound.pop("heads"), bound.pop("mask", None)
        q, k, v = (bound.pop(n) for n in "qkv")
        if not bound.pop("skip_reshape", False):  # [B, L, H*D] (SD3, HiDream; SD3's v is [B, L, H, D])
            q, k, v = (t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        self.q, self.k, self.v, self._rest = q, k, v, bound

    @property
    def plain_shape(self) -> bool:
        """The output is [B, L, H*D] (what the edits return), not left in heads."""
        return not self._rest.get("skip_output_reshape", False)

    def plain(self):
        """The call unchanged."""
        if self.previous is not None:
            return self.previous(self.func, *self.args, **self.kwargs)
        return self.func(*self.args, **self.kwargs)

    def attend(self, q, k, v, mask):
        """The model's own attention on [b, H, rows, D] (any rows, edited keys): [b, rows, H*D]."""
        kw = dict(self._rest, mask=mask, skip_reshape=True)
        kw["transformer_options"] = {**(kw.get("transformer_options") or {}), OUTER_CALL: self}
        if self.previous is not None:
            return self.previous(self.func, q, k, v, self.heads, **kw)
        return self.func(q, k, v, self.heads, **kw)

    def text_first(self, layout: CallLayout) -> None:
        """Reorder an image-first call's q, k, v and mask to [text, image, rest] (undone by `output`)."""
        if not layout.image_first:
            return
        length, n = self.q.shape[2], layout.n_img
        dev = self.q.device
        self.order = torch.cat([torch.arange(n, n + layout.txt_len, device=dev), torch.arange(n, device=dev),
                                torch.arange(n + layout.txt_len, length, device=dev)])
        self.q, self.k, self.v = (t.index_select(2, self.order) for t in (self.q, self.k, self.v))
        if self.mask is not None:
            m = self.mask
            if m.shape[-2] > 1:
                m = m.index_select(-2, self.order)
            self.mask = m.index_select(-1, self.order) if m.shape[-1] > 1 else m

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """[B, L, H*D] of the text-first view back in the call's own order."""
        return out if self.order is None else torch.empty_like(out).index_copy_(1, self.order, out)


def entries(to, batch: int, rows: list[int]) -> tuple:
    """The uuids of the conditioning entries whose batch chunks hold `rows`."""
    uuids = to.get("uuids") or []
    per = batch // len(to.get("cond_or_uncond") or [0])
    return tuple(uuids[r // per] for r in rows[::per]) if uuids else ()


def run_model_call(executor, args, kwargs, to, key: str, call, node: str, ran, override):
    """Run the model call with `call` (the patch's view of it) in its transformer_options `to`, where the override
    finds it; then a clear error if the override never ran (`ran.ran` still False) because it was replaced."""
    to[key + CALL_SUFFIX] = call
    try:
        out = executor(*args, **kwargs)
    finally:
        to.pop(key + CALL_SUFFIX, None)
    check_ran(node, ran, to, override)
    return out


def install_patch(model, name: str, key: str, make_override, make_wrapper, new_run, record, provenance_check):
    """A clone of `model` with an attention override (`make_override(previous override)`), its APPLY_MODEL wrapper
    (`make_wrapper(override)`), one `new_run()` state per sampling run (`record(state, latent)` when it completes)
    and, when the prompt is tagged, the check that the positive entries come from it: `provenance_check` is (node,
    the prompt's tag, the node that encodes it, the fix)."""
    import comfy.patcher_extension

    patched = model.clone()
    to = patched.model_options.setdefault("transformer_options", {})
    override = make_override(to.get("optimized_attention_override"))
    to["optimized_attention_override"] = override
    run_state.install(patched, name, key, lambda guider: new_run(), record)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, name, make_wrapper(override))
    node, tag, maker, fix = provenance_check
    if tag is not None:  # only the positive entries encoded from the prompt of the entities
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, provenance.KEY,
                                     provenance.outer_sample_check(node, "entities", tag, maker, fix, False))
    return patched
