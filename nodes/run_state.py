"""State that belongs to one sampling run of a patched model (ComfyUI glue; imports ComfyUI inside functions only).

A patch keeps nothing mutable in its closures. `install` adds an OUTER_SAMPLE wrapper to the patched clone that
makes a fresh state for every sampling run (`factory(guider)`) and puts it into that run's own copy of the model
options, as ComfyUI's EasyCache does with its holder. ComfyUI passes those options on to every model call of the run,
so the patch's APPLY_MODEL / DIFFUSION_MODEL wrappers and its attention override find the state with
`state_of(transformer_options, key, node)`; the next run, another graph sharing the patched model, or a clone never sees
it. Nothing is stored in the patcher's own model_options, so 0.3.75's clone() (a deep copy of them) copies no state,
and 0.33.0's (a shared reference) shares none. Each patch has its own key, so two stacked patches keep two states.
"""

from __future__ import annotations

import uuid

STATE_KEY_ATTRIBUTE = "leakless_state_key"


def new_key(name: str) -> str:
    """A transformer_options key for one patch's run states."""
    return f"{name}.{uuid.uuid4().hex[:12]}"


def install(patcher, name: str, key: str, factory, finish=None) -> None:
    """An OUTER_SAMPLE wrapper (wrapper key `name`) on `patcher`, the patch's clone: each sampling run gets
    `factory(guider)` as transformer_options[key]; after a run that completed, `finish(state, output latent)`."""
    import comfy.model_patcher
    import comfy.patcher_extension

    def outer_sample(executor, *args, **kwargs):
        guider = executor.class_obj
        original = guider.model_options
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)  # this run's own
        state = factory(guider)
        guider.model_options.setdefault("transformer_options", {})[key] = state
        try:
            output = executor(*args, **kwargs)
            if finish is not None:
                finish(state, output)
            return output
        finally:
            guider.model_options = original

    setattr(outer_sample, STATE_KEY_ATTRIBUTE, key)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, name, outer_sample)


def state_of(transformer_options, key: str, node: str):
    """The state of the run this model call belongs to; a clear error for a call outside a sampler's run."""
    state = (transformer_options or {}).get(key)
    if state is None:
        raise RuntimeError(f"{node}: the model was called outside a sampler's run; sample with KSampler, "
                           "KSamplerAdvanced or SamplerCustomAdvanced")
    return state


def watch(patcher, name: str, prepare=None):
    """For tests and benchmarks: (a clone of `patcher`, the list that receives the state of each of its sampling
    runs of the patch installed as `name`). `prepare(state)`, if given, runs on each state before sampling."""
    import comfy.patcher_extension as ext

    keys = [getattr(w, STATE_KEY_ATTRIBUTE) for w in patcher.wrappers.get(ext.WrappersMP.OUTER_SAMPLE, {}).get(name, [])
            if hasattr(w, STATE_KEY_ATTRIBUTE)]
    if not keys:
        raise ValueError(f"no Leakless patch '{name}' on this model")
    states, clone = [], patcher.clone()

    def spy(executor, *args, **kwargs):  # added after the patch's wrapper, so it runs inside it
        state = executor.class_obj.model_options["transformer_options"][keys[-1]]
        if prepare is not None:
            prepare(state)
        states.append(state)
        return executor(*args, **kwargs)

    clone.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, f"{name}.watch", spy)
    return clone, states
