"""Test-only output nodes: what a CONDITIONING holds, how a CLIP tokenizes a text and what a LATENT is, as a headless
run's history can carry them."""

import torch


def describe(value):
    return list(value.shape) if torch.is_tensor(value) else value


class InfoNode:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "info"
    OUTPUT_NODE = True


class TinyTestConditioningInfo(InfoNode):
    """Per conditioning entry: the cond's shape and every other key (tensors as their shapes); with a CLIP, the ids
    its tokenizer gives `text` per encoder key (first chunk)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)},
                "optional": {"clip": ("CLIP",), "text": ("STRING", {"default": ""})}}

    def info(self, conditioning, clip=None, text=""):
        entries = [{"cond": describe(cond), **{k: describe(v) for k, v in extra.items()}}
                   for cond, extra in conditioning]
        tokens = {} if clip is None else {k: [t[0] for t in chunks[0]] for k, chunks in clip.tokenize(text).items()}
        return {"ui": {"conditioning": entries, "tokens": [tokens]}}


class TinyTestLatentInfo(InfoNode):
    """A latent's shape and whether every value is finite."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def info(self, samples):
        x = samples["samples"]
        return {"ui": {"latent": [{"shape": describe(x), "finite": bool(torch.isfinite(x).all())}]}}


class TinyTestLatentDigest(InfoNode):
    """The SHA-256 of a latent's values (float32, contiguous, shape included): equal bits, equal digest."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def info(self, samples):
        import hashlib

        x = samples["samples"].detach().to("cpu", torch.float32).contiguous()
        digest = hashlib.sha256(repr(tuple(x.shape)).encode() + x.numpy().tobytes()).hexdigest()
        return {"ui": {"digest": [digest]}}


NODE_CLASS_MAPPINGS = {"TinyTestConditioningInfo": TinyTestConditioningInfo, "TinyTestLatentInfo": TinyTestLatentInfo,
                       "TinyTestLatentDigest": TinyTestLatentDigest}
