"""The one ComfyUI driver for sampling-time patches (DeLeaker, the attention heatmap, ToMe): the only code that
touches ModelPatcher, wrappers, transformer_options, the attention override chain, per-run state, run results and
the prompt checks. A patch (nodes/methods/contract.py) is pure; `install` puts it on a clone of the MODEL:

- an OUTER_SAMPLE wrapper makes a fresh run state for every sampling run (`patch.new_run`) and puts it into that
  run's own copy of the model options, as ComfyUI's EasyCache does with its holder, so graphs that share the
  patched model, a later run or a clone never see it; when the run completes, `patch.finish` gives its result,
  kept with the latent it made (results.py);
- an APPLY_MODEL wrapper (every model runs it; SD3's MMDiT runs no DIFFUSION_MODEL wrapper) describes each model
  call once (`ModelCall`: the registry entry, the step from the sigma schedule, the rows of the patch's prompt,
  the layout of a main attention call) and asks the patch for its state in that call;
- an attention override that chains the one already there (Sage, Flash, ComfyUI's own backend node, another
  Leakless patch) shows the patch every main attention call (joint models) or cross-attention call (UNets, told
  by an attn2 patch ComfyUI runs just before them, never by a length), and runs the call unchanged wherever the
  patch returns nothing. A call whose length the layout cannot explain is left alone, and said once.
Errors a patch reports (MethodError) are restated naming the node; an override that a later node replaced without
chaining it (ComfyUI's ModelAttentionBackend) stops the sampling with an error that says which order works.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from dataclasses import dataclass, field

import torch

from ..errors import LeaklessInputError
from ..methods.contract import AttentionCall, MethodError, ModelCall
from ..registry.families import BY_ID as FAMILIES
from ..registry.layout import context_layout
from ..registry.models import DiffusionModel, call_layout, model_of, names
from ..text import provenance
from .calls import OUTER_CALL, ComfyAttention, apply_model_args, cond_rows, entries, sigma_step
from .results import Record, fingerprint, prompt_id

STATE_KEY_ATTRIBUTE = "leakless_state_key"
CALL_SUFFIX = ".call"  # after a patch's key: the model call in progress, in that call's transformer_options


def model_entry(node: str, model_patcher, needs: str, which=lambda m: m.joint, fix: str = "") -> DiffusionModel:
    """The registry entry of a MODEL input; a clear error naming the models for which `which` holds (and `fix`)
    when it is none of them."""
    base = getattr(model_patcher, "model", None)
    config = getattr(base, "model_config", None)
    found = model_of([c.__name__ for c in type(config).__mro__]) if config is not None else None
    if found is None or not which(found):
        name = type(config).__name__ if config is not None else type(model_patcher).__name__
        raise LeaklessInputError(node, "model", f"it {needs}, which this model ({name}) does not have or Leakless "
                                 "cannot reach.", f"connect a model of: {names(which)}." + (f" {fix}" if fix else ""))
    return found


def check_prompt_family(node: str, input_name: str, family: str, model: DiffusionModel, encode_node: str) -> None:
    """A clear error when phrases were encoded for another text family than the patched model reads."""
    if family not in model.text_families:
        raise LeaklessInputError(node, input_name, f"they come from a {FAMILIES[family].name} prompt, and the model "
                                 f"is {model.name}.", f"encode the prompt in {encode_node} with this model's own text "
                                 "encoder.")


@dataclass(frozen=True)
class PromptCheck:
    """Which prompt a patch's phrases were encoded from: before sampling, the positive entries must carry its tag
    (every one of them when `every_entry`); the rows of those that do are the patch's rows."""

    tag: provenance.PromptTag | None
    input_name: str
    maker: str  # the node that encodes it
    fix: str
    every_entry: bool = False


class _Run:
    """One sampling run of one patch: the patch's state, and what the user is told once."""

    def __init__(self, state):
        self.state = state
        self.notes: list[str] = []
        self.lock = threading.Lock()

    def note(self, node: str, text: str) -> None:
        with self.lock:
            if text in self.notes:
                return
            self.notes.append(text)
        logging.warning("%s: %s", node, text)


@dataclass
class _Call:
    """One model call in progress: the patch's view and state, and what the override saw."""

    run: _Run
    view: ModelCall
    state: object
    ran: bool = False  # an override of this patch was reached
    main: int = 0  # main attention calls so far (the block index where ComfyUI gives none)
    unknown: int = 0  # calls whose length the layout cannot explain
    last_outer: object = None  # the outer patch's call whose parts were seen last
    cross: tuple[int, int] | None = None  # UNets: the grid of the cross-attention call that comes next
    order: list[int] | None = None  # a main call's positions in text-first order (None: already text first)
    _index: dict = field(default_factory=dict)  # `order` as an index tensor per (device, length)

    def text_first(self, a: ComfyAttention) -> torch.Tensor | None:
        """Reorders a main call's q, k, v and mask to text first (tokens after the layout's stay last); returns the
        index that puts a [B, L, H*D] output back in the call's own order (index_copy_ along L), None when the call
        is text first already."""
        if self.order is None:
            return None
        length, dev = a.q.shape[2], a.q.device
        key = (str(dev), length)
        if key not in self._index:
            self._index[key] = torch.tensor(self.order + list(range(len(self.order), length)), device=dev)
        index = self._index[key]
        a.q, a.k, a.v = (t.index_select(2, index) for t in (a.q, a.k, a.v))
        if a.mask is not None:
            m = a.mask
            if m.shape[-2] > 1:
                m = m.index_select(-2, index)
            a.mask = m.index_select(-1, index) if m.shape[-1] > 1 else m
        return index


class Installed:
    """One patch on one patched clone: its wrappers and override read it; it holds no run's state."""

    def __init__(self, node: str, patch, model: DiffusionModel, key: str, results=None, prompt: PromptCheck = None):
        self.node, self.patch, self.model, self.key = node, patch, model, key
        self.results, self.prompt = results, prompt
        self._cross_attentions = {}  # UNet (by id) -> its cross-attention calls per model call
        self.scale = model.latent_scale  # image pixels per latent pixel; install() reads ComfyUI's own when it has it

    def __deepcopy__(self, memo):  # ModelPatcher.clone() may deep-copy model options: one patch, one results store
        return self

    @contextlib.contextmanager
    def restated(self):
        """A patch's MethodError as the user's error, naming this node."""
        try:
            yield
        except MethodError as e:
            raise LeaklessInputError(self.node, e.input_name, e.problem, e.fix) from None

    # -- one sampling run
    def outer_sample(self, executor, *args, **kwargs):
        import comfy.model_patcher

        guider = executor.class_obj
        original = guider.model_options
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)  # this run's own
        negative = (getattr(guider, "original_conds", None) or {}).get("negative") or [{}]
        info = {"cfg": float(getattr(guider, "cfg", 1.0)), "negative": negative[0].get("cross_attn"),
                "progress": _progress_bar}
        run = _Run(self.patch.new_run(info))
        guider.model_options.setdefault("transformer_options", {})[self.key] = run
        try:
            output = executor(*args, **kwargs)
            with self.restated():
                value = self.patch.finish(run.state, output)
            if self.results is not None and value is not None and torch.is_tensor(output):
                self.results.add(Record(value, tuple(output.shape), fingerprint(output), prompt_id(),
                                        tuple(run.notes), self.scale))
            return output
        finally:
            guider.model_options = original

    # -- one model call
    def apply_model(self, executor, *args, **kwargs):
        x, context, to, extra = apply_model_args(args, kwargs)
        run = to.get(self.key)
        if run is None:
            raise LeaklessInputError(self.node, "model", "the model was called outside a sampler's run.",
                                     "sample with KSampler, KSamplerAdvanced or SamplerCustomAdvanced.")
        with self.restated():
            view, order = self._view(executor.class_obj, x, context, to, extra)
            model_call = getattr(self.patch, "model_call", None)
            if model_call is not None:
                if to.get("multigpu_thread_device") is not None:  # 0.33.0's multi-GPU work units
                    raise MethodError("model", "it changes a step's latent in both its cond and uncond passes, "
                                      "which MultiGPU CFG Split runs at the same time on different GPUs.",
                                      "remove MultiGPU CFG Split (MultiGPU_WorkUnits) from this model's chain: "
                                      f"{self.node} samples on one GPU.")
                from .runner import Runner

                return model_call(run.state, view, Runner(executor, args, kwargs, self.node))
            state = self.patch.begin(run.state, view)
        if state is None:
            return executor(*args, **kwargs)
        call = _Call(run, view, state, order=order)
        to[self.key + CALL_SUFFIX] = call
        try:
            out = executor(*args, **kwargs)
        finally:
            to.pop(self.key + CALL_SUFFIX, None)
        self._after(call, to)
        return out

    def _view(self, base_model, x, context, to, extra) -> tuple[ModelCall, list[int] | None]:
        """The patch's view of a model call, and a main call's text-first order (None: already text first)."""
        batch = x.shape[0]
        rows = cond_rows(to, batch, self._tagged(to))
        step = sigma_step(to)
        view = ModelCall(self.model, batch, tuple(rows), entries(to, batch, rows), None, None, None,
                         latent=tuple(x.shape))
        if isinstance(step, MethodError):
            view.schedule_error = step
        else:
            view.step, view.steps = step
        dm = base_model.diffusion_model
        context_rows = 0 if context is None else context.shape[1]
        if not self.model.joint:
            if id(dm) not in self._cross_attentions:
                self._cross_attentions[id(dm)] = _cross_attentions(dm)
            view.layout, view.n_blocks = context_layout(x.shape, context_rows), self._cross_attentions[id(dm)]
            return view, None
        refused = self.model.refused(extra)
        if refused:
            raise MethodError("model", f"the model call holds {refused}, a layout {self.node} does not edit.",
                              f"remove them from the conditioning, or bypass {self.node} for this model.")
        view.layout, order = call_layout(self.model, dm, x.shape, context_rows, extra).text_first()
        view.n_blocks, view.n_first = self.model.block_counts(dm)
        return view, order

    def _tagged(self, to):
        """The uuids of this sampling's positive entries from the patch's prompt (None: not tagged, or unknown)."""
        if self.prompt is None or self.prompt.tag is None:
            return None
        return (to.get(provenance.UUIDS_KEY) or {}).get(self.prompt.tag.digest)

    def _after(self, call: _Call, to) -> None:
        """After a model call: the override must have run (unless a cache skipped the model), and a joint model's
        main calls must have been all its blocks."""
        if not call.ran and not chains(to.get("optimized_attention_override"), self.override):
            raise LeaklessInputError(
                self.node, "model", "its attention patch did not run: a node placed after it replaced the model's "
                "attention override without chaining it (ComfyUI's ModelAttentionBackend does that), or the model "
                "computes its attention itself.", f"place ModelAttentionBackend (or the other attention node) before "
                f"{self.node}: it then runs that attention inside its own.")
        view = call.view
        if view.layout is not None and call.ran and call.main != view.n_blocks and (call.main or call.unknown):
            call.run.note(self.node, f"{view.model.name}: {call.main} of this model call's attention calls had the "
                          f"layout of its {view.n_blocks} main blocks ({call.unknown} did not fit it), so the other "
                          "blocks were left alone. This model's attention layout is not the one Leakless knows "
                          "(a newer ComfyUI?).")

    # -- one attention call
    override = None  # set by install: this patch's override

    def attention(self, func, previous, args, kwargs):
        to = kwargs.get("transformer_options") or {}
        call = to.get(self.key + CALL_SUFFIX)
        a = ComfyAttention(func, previous, args, kwargs)
        if call is None:
            return a.plain()
        call.ran = True
        kind, block, grid = self._classify(call, a, to)
        if kind not in ("main", "cross"):
            return a.plain()
        index = call.text_first(a) if kind == "main" else None
        with self.restated():
            out = self.patch.attention(call.run.state, call.state,
                                       AttentionCall(a.q, a.k, a.v, a.mask, kind, block, grid, a.attend))
        if out is None:
            return a.plain()
        return out if index is None else torch.empty_like(out).index_copy_(1, index, out)

    def _classify(self, call: _Call, a: ComfyAttention, to):
        """(kind, main block index, grid) of an attention call (see AttentionCall.kind)."""
        if not self.model.joint:
            grid, call.cross = call.cross, None
            if grid is not None and a.q.shape[2] == grid[0] * grid[1] and a.k.shape[2] == call.view.layout.text_len:
                call.main += 1
                return "cross", call.main - 1, grid
            return "other", None, None
        outer = to.get(OUTER_CALL)
        if outer is not None:
            if outer is not call.last_outer:
                call.last_outer, call.main = outer, call.main + 1
            return "part", call.main - 1, None
        layout = call.view.layout
        fits = layout.fits(a.k.shape[2]) if a.self_attention else \
            ("unknown" if layout.fits(a.k.shape[2]) == "main" else "other")
        if fits == "main":
            call.main += 1
            return "main", call.main - 1, None
        if fits == "unknown":
            call.unknown += 1
            call.run.note(self.node, f"{call.view.model.name}: an attention call of {a.q.shape[2]} queries and "
                          f"{a.k.shape[2]} keys does not fit the layout Leakless knows for it ({layout.text_len} text "
                          f"and {layout.n_img} image tokens); such calls were left alone.")
        return "other", None, None

    # UNets: ComfyUI runs these transformer patches just before each self- and cross-attention call
    def before_self_attention(self, n, context, value, extra_options):
        call = extra_options.get(self.key + CALL_SUFFIX)
        if call is not None:
            call.cross = None
        return n, context, value

    def before_cross_attention(self, n, context, value, extra_options):
        call = extra_options.get(self.key + CALL_SUFFIX)
        shape = extra_options.get("activations_shape")
        if call is not None and shape is not None:
            call.cross = (int(shape[-2]), int(shape[-1]))
        return n, context, value


def _progress_bar(total: int):
    import comfy.utils

    return comfy.utils.ProgressBar(total)


def _cross_attentions(unet) -> int:
    """The cross-attention calls per model call of a UNet."""
    return sum(1 for name, m in unet.named_modules() if name.endswith("attn2") and m is not None)


class _Override:
    """The attention override `install` sets: the patch's view of each call, the previous override chained."""

    def __init__(self, installed: Installed, previous):
        self.installed, self.leakless_previous = installed, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, *args, **kwargs):
        return self.installed.attention(func, self.leakless_previous, args, kwargs)


def chains(active, override) -> bool:
    """Whether the attention override in use is `override` or a Leakless override chained over it."""
    for _ in range(64):  # a chain of stacked patches; never a cycle
        if active is None or active is override:
            return active is override
        active = getattr(active, "leakless_previous", None)
    return False


def patches_below(model) -> list:
    """The Leakless patches already in a MODEL's attention override chain, nearest first."""
    active = (model.model_options.get("transformer_options") or {}).get("optimized_attention_override")
    found = []
    for _ in range(64):
        if not isinstance(active, _Override):
            return found
        found.append(active.installed)
        active = active.leakless_previous
    return found


def install(node: str, model, patch, name: str, entry: DiffusionModel, results=None,
            prompt: PromptCheck | None = None):
    """A clone of `model` with `patch` (see the module's description); `name` keys its wrappers."""
    import comfy.patcher_extension as ext

    patched = model.clone()
    key = f"{name}.{uuid.uuid4().hex[:12]}"
    installed = Installed(node, patch, entry, key, results, prompt)
    latent_format = getattr(getattr(model, "model", None), "latent_format", None)
    installed.scale = int(getattr(latent_format, "spacial_downscale_ratio", entry.latent_scale))
    if hasattr(patch, "attention"):
        if patch.edits:
            for below in patches_below(model):
                if not below.patch.edits:
                    raise LeaklessInputError(node, "model", f"this model already carries {below.node}, which only "
                                             f"reads attention: under {node} it would see {node}'s edited calls in "
                                             "parts and record nothing.", f"apply {below.node} after {node} (between "
                                             f"{node} and the sampler); it then shows the attention before the edits.")
        to = patched.model_options.setdefault("transformer_options", {})
        installed.override = _Override(installed, to.get("optimized_attention_override"))
        to["optimized_attention_override"] = installed.override
        if not entry.joint:
            patched.set_model_attn1_patch(installed.before_self_attention)
            patched.set_model_attn2_patch(installed.before_cross_attention)
    patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, name, _keyed(installed.outer_sample, key))
    patched.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, name, installed.apply_model)
    if prompt is not None and prompt.tag is not None:
        patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, provenance.KEY, _prompt_check(node, prompt))
    return patched


def _keyed(wrapper, key: str):
    """`wrapper` as a function that carries the patch's run-state key (for `watch`)."""

    def outer_sample(executor, *args, **kwargs):
        return wrapper(executor, *args, **kwargs)

    setattr(outer_sample, STATE_KEY_ATTRIBUTE, key)
    return outer_sample


def _prompt_check(node: str, check: PromptCheck):
    """An OUTER_SAMPLE wrapper: before sampling, the guider's positive entries must come from the tagged prompt
    (provenance.check_entries); the uuids of those that do go into this sampling's transformer_options."""
    tag = check.tag

    def wrapper(executor, *args, **kwargs):
        guider = executor.class_obj
        positive = (getattr(guider, "conds", None) or getattr(guider, "original_conds", {})).get("positive") or []
        found = [(provenance.tag_of(c), c["cross_attn"].shape[1] if torch.is_tensor(c.get("cross_attn")) else -1)
                 for c in positive]
        ours = provenance.check_entries(node, check.input_name, tag, found, check.maker, check.fix,
                                        check.every_entry)
        options = guider.model_options.setdefault("transformer_options", {})  # this sampling's copy
        uuids = dict(options.get(provenance.UUIDS_KEY, {}))
        uuids[tag.digest] = frozenset(positive[i].get("uuid") for i in ours)
        options[provenance.UUIDS_KEY] = uuids
        return executor(*args, **kwargs)

    return wrapper


def watch(patcher, name: str, prepare=None):
    """For tests and benchmarks: (a clone of `patcher`, the list that receives the patch's state of each of its
    sampling runs, for the patch installed as `name`). `prepare(state)`, if given, runs on each before sampling."""
    import comfy.patcher_extension as ext

    keys = [getattr(w, STATE_KEY_ATTRIBUTE) for w in patcher.wrappers.get(ext.WrappersMP.OUTER_SAMPLE, {}).get(name, [])
            if hasattr(w, STATE_KEY_ATTRIBUTE)]
    if not keys:
        raise ValueError(f"no Leakless patch '{name}' on this model")
    states, clone = [], patcher.clone()

    def spy(executor, *args, **kwargs):  # added after the patch's wrapper, so it runs inside it
        run = executor.class_obj.model_options["transformer_options"][keys[-1]]
        if prepare is not None:
            prepare(run.state)
        states.append(run.state)
        return executor(*args, **kwargs)

    clone.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, f"{name}.watch", spy)
    return clone, states
