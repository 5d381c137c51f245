"""A model call as a whole-model-call patch (ToMe) uses it: the contract's ModelRunner over ComfyUI's APPLY_MODEL
executor. It runs the model on chosen rows with chosen context (each row with its sample's sigma and ADM vector),
records cross-attention probabilities at chosen UNet layers with an attn2 replace patch (chaining one already
there), and gives ComfyUI's interrupt, progress bar and memory release."""

from __future__ import annotations

import torch

from ..methods.contract import MethodError
from .calls import APPLY_MODEL_ARGS, apply_model_args
from .clip import check_interrupt


class _EnoughMaps(Exception):
    """Raised by the map recorder after the last layer asked for: the rest of the pass is not run."""


class Runner:
    def __init__(self, executor, args, kwargs, node: str):
        bound = dict(zip(APPLY_MODEL_ARGS, args, strict=False))
        bound.update({k: v for k, v in kwargs.items() if k in APPLY_MODEL_ARGS})
        self.x, self.context, self.to, self.inputs = apply_model_args(args, kwargs)
        self.executor, self.node = executor, node
        self.sigma, self.c_concat, self.control = bound["t"], bound.get("c_concat"), bound.get("control")
        self.flags = self.to.get("cond_or_uncond") or [0]
        self.per = self.x.shape[0] // len(self.flags)
        first = self.flags.index(0) if 0 in self.flags else 0  # rows whose ADM vector carries the positive's sizes
        self.cond = slice(first * self.per, (first + 1) * self.per)
        self.sample_sigmas = self.to.get("sample_sigmas")

    @property
    def unet(self):
        return self.executor.class_obj.diffusion_model

    def run(self, x, context):
        """The sampler's model call with latent `x` and cross-attention `context` (the rest as it was)."""
        return self.executor(x, self.sigma, self.c_concat, context, self.control, self.to, **self.inputs)

    def input_scale(self, sigma, like):
        """The model's input scaling c_in at `sigma`, shaped like `like`."""
        return self.executor.class_obj.model_sampling.calculate_input(sigma, torch.ones_like(like))

    def _rows(self, value, samples):
        return value[self.cond][samples]

    def denoise(self, x, context, samples: list[int], without_pooled: int = 0):
        """The denoised prediction for latent rows `x` with `context`, row i of `x` being cond sample
        `samples[i]` (its sigma and ADM vector). `without_pooled`: the ADM vector's pooled text zeroed, all but its
        last `without_pooled` values (SDXL's size embeddings). No ControlNet: its inputs are per batch."""
        return self._pass(x, context, samples, without_pooled)

    def cross_attention_maps(self, x, context, samples: list[int], layers, without_pooled: int = 0):
        """[(head-averaged cross-attention probabilities [b, N, T] fp32, their (h, w)) at each UNet transformer
        block in `layers` ((block, id, index) keys, in the order they run)], from one pass that stops after the
        last of them."""
        from ..methods.tome import cross_attention_probs

        store = []

        def recorder(previous):
            def attn2(q, k, v, extra_options):
                import comfy.ldm.modules.attention as attention

                store.append((cross_attention_probs(q, k, extra_options["n_heads"]),
                              tuple(extra_options["activations_shape"][-2:])))
                if len(store) == len(layers):
                    raise _EnoughMaps
                if previous is not None:
                    return previous(q, k, v, extra_options)
                return attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                                     transformer_options=extra_options)

            return attn2

        replace = dict(self.to.get("patches_replace", {}))
        attn2 = dict(replace.get("attn2", {}))
        for key in layers:
            attn2[key] = recorder(attn2.get(key, attn2.get(key[:2])))
        replace["attn2"] = attn2
        self._pass(x, context, samples, without_pooled, {"patches_replace": replace})
        if len(store) != len(layers):
            raise MethodError("model", f"the model has no cross-attention at {layers}; it is not the UNet this "
                              "method reads.", "connect an SDXL checkpoint's MODEL.")
        return store

    def _pass(self, x, context, samples, without_pooled, options=None):
        to = {**self.to, "cond_or_uncond": [0], "sigmas": self._rows(self.sigma, samples), **(options or {})}
        inputs = {}
        for name, value in self.inputs.items():
            if torch.is_tensor(value) and value.shape[:1] == self.x.shape[:1]:
                value = self._rows(value, samples)
                if name == "y" and without_pooled:
                    value = torch.cat([torch.zeros_like(value[:, :-without_pooled]), value[:, -without_pooled:]], 1)
            inputs[name] = value
        c_concat = self._rows(self.c_concat, samples) if torch.is_tensor(self.c_concat) else self.c_concat
        try:
            return self.executor(x, to["sigmas"], c_concat, context, None, to, **inputs)
        except _EnoughMaps:
            return None

    def check_interrupt(self) -> None:
        check_interrupt()

    def progress(self, total: int):
        import comfy.utils

        return comfy.utils.ProgressBar(total)

    def free_memory(self) -> None:
        import comfy.model_management

        comfy.model_management.soft_empty_cache()

    def too_small_for_one_image(self) -> tuple[int, int] | None:
        """(the smallest longer side in px, downsamplings) when this latent is too small for a one-image pass of
        this UNet: a group norm with one channel per group after n downsamplings sees a single value unless the
        latent's longer side is over 2^n; None when it is large enough."""
        from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

        levels, level = set(), 0
        unet = self.unet
        for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks, unet.out]:
            for m in block.modules():  # in the order they run
                if isinstance(m, torch.nn.GroupNorm) and m.num_channels == m.num_groups:
                    levels.add(level)
                elif isinstance(m, Downsample):
                    level += 1
                elif isinstance(m, Upsample):
                    level -= 1
        h, w = self.x.shape[-2:]
        if all(-(-h // 2 ** n) * -(-w // 2 ** n) > 1 for n in levels):
            return None
        return (2 ** max(levels) + 1) * 8, max(levels)
