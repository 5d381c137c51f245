"""The model families Leakless knows: one entry each, read by every node, the token picker route, the trainer CLI
and the picker's JavaScript (through the route). Pure: no ComfyUI import.

A family is what a CLIP object encodes for: its tokenizer keys, where each encoder's token rows sit in the
CONDITIONING the diffusion model reads, the chat template an LLM tokenizer wraps prompts in, and the loaders that
make it. Ids are ComfyUI's CLIPLoader / DualCLIPLoader `type` names where one exists, plus `sdxl` and `sd15`.
Adding a family is one entry here plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    id: str
    name: str
    tokenizer_classes: tuple[str, ...]  # class names in the CLIP tokenizer's MRO that identify the family
    encoders: tuple[str, ...]  # the keys of ComfyUI's tokenizer output
    rows: tuple[tuple[str, ...], ...]  # CONDITIONING rows in sequence order; encoders of a group share rows
    # (their outputs are concatenated along channels); encoders in no group only feed the pooled vector
    loaders: tuple[tuple[str, str], ...]  # (loader node, its `type` value) that load this family's CLIP
    tokenizer: str = ""  # "module:Class" the picker route builds; "" when the tokenizer comes from the model file
    causal: bool = False  # the encoder the diffusion model reads is causal (CLIP, decoder LLMs): last-token rule
    chat_template: bool = False  # an LLM tokenizer: wraps the prompt in its `llama_template`, ignores weights
    template_prefix_stripped: bool = False  # ComfyUI drops the rows of the chat template before the prompt
    empty_pooled_when_replaced: bool = False  # 'reference' pooled rule of the paper's code (SDXL)
    joint: bool = False  # its diffusion models read the rows in joint text-image attention (DeLeaker, heatmap)
    tome: bool = False  # ToMe: the rows are one CLIP chunk a UNet cross-attends to
    extra_rows: tuple[tuple[str, str], ...] = ()  # (conditioning dict key, encoder): more token rows, on dim -2
    optional: tuple[str, ...] = ()  # encoders the tokenizer adds for some prompts only; their tokens encode a text
    # derived from the prompt (HunyuanImage's ByT5 glyph rows of quoted phrases), so they are not aligned or edited
    comfyui: str = "0.3.75"  # the first ComfyUI of the test matrix that has the family
    note: str = ""  # shown in the picker and the Token Inspector

    @property
    def row_encoders(self) -> tuple[str, ...]:
        """The encoders whose tokens are CONDITIONING rows, first of each group first."""
        return tuple(k for group in self.rows for k in group)

    @property
    def uses_weights(self) -> bool:
        return not self.chat_template  # ComfyUI's LLM tokenizers pass disable_weights=True

    def payload(self) -> dict:
        return {"id": self.id, "name": self.name, "loaders": [list(x) for x in self.loaders],
                "picker": bool(self.tokenizer), "weights": self.uses_weights, "note": self.note}


ENCODER_NAMES = {"l": "CLIP-L", "g": "CLIP-G", "t5xxl": "T5-XXL", "qwen25_7b": "Qwen2.5-VL-7B", "qwen3_4b": "Qwen3-4B",
                 "qwen3_8b": "Qwen3-8B", "qwen3vl_4b": "Qwen3-VL-4B", "mistral3_24b": "Mistral-3-24B",
                 "llama": "Llama-3.1-8B", "gemma2_2b": "Gemma-2-2B", "byt5": "ByT5-small"}

_LLM_NOTE = ("An LLM text encoder: ComfyUI reads (word:1.2) as plain text here, and wraps the prompt in the "
             "model's chat template, whose tokens are rows too.")

FAMILIES: tuple[Family, ...] = (
    Family("flux", "FLUX.1 / Kontext / Krea", ("FluxTokenizer",), ("l", "t5xxl"), (("t5xxl",),),
           (("DualCLIPLoader", "flux"),), "comfy.text_encoders.flux:FluxTokenizer", joint=True),
    Family("sdxl", "SDXL", ("SDXLTokenizer",), ("l", "g"), (("l", "g"),),
           (("CheckpointLoaderSimple", ""), ("DualCLIPLoader", "sdxl")), "comfy.sdxl_clip:SDXLTokenizer",
           causal=True, empty_pooled_when_replaced=True, tome=True),
    Family("sd15", "SD1.5", ("SD1Tokenizer",), ("l",), (("l",),),
           (("CheckpointLoaderSimple", ""), ("CLIPLoader", "stable_diffusion")), "comfy.sd1_clip:SD1Tokenizer",
           causal=True, tome=True),
    Family("chroma", "Chroma", ("PixArtTokenizer",), ("t5xxl",), (("t5xxl",),), (("CLIPLoader", "chroma"),),
           "comfy.text_encoders.pixart_t5:PixArtTokenizer", joint=True),
    Family("sd3", "SD3 / SD3.5", ("SD3Tokenizer",), ("l", "g", "t5xxl"), (("l", "g"), ("t5xxl",)),
           (("TripleCLIPLoader", ""), ("CheckpointLoaderSimple", ""), ("CLIPLoader", "sd3")),
           "comfy.text_encoders.sd3_clip:SD3Tokenizer", joint=True,
           note="Rows are 77 CLIP-L/G rows per chunk, then T5's: a word has rows in both."),
    Family("qwen_image", "Qwen-Image", ("QwenImageTokenizer",), ("qwen25_7b",), (("qwen25_7b",),),
           (("CLIPLoader", "qwen_image"),), "comfy.text_encoders.qwen_image:QwenImageTokenizer", causal=True,
           chat_template=True, joint=True, template_prefix_stripped=True,
           note=_LLM_NOTE + " ComfyUI drops the system part of the template, so rows start at the prompt."),
    Family("z_image", "Z-Image", ("ZImageTokenizer",), ("qwen3_4b",), (("qwen3_4b",),),
           (("CLIPLoader", "lumina2"),), "comfy.text_encoders.z_image:ZImageTokenizer", causal=True, chat_template=True,
           joint=True,
           note=_LLM_NOTE),
    Family("flux2", "FLUX.2 dev", ("Flux2Tokenizer",), ("mistral3_24b",), (("mistral3_24b",),),
           (("CLIPLoader", "flux2"),), causal=True, chat_template=True, joint=True,
           note=_LLM_NOTE + " Its Mistral tokenizer is read from the text encoder file, so the picker cannot show "
           "it: use Leakless Token Inspector."),
    Family("flux2_klein", "FLUX.2 Klein", ("KleinTokenizer",), ("qwen3_4b",), (("qwen3_4b",),),
           (("CLIPLoader", "flux2"),), "comfy.text_encoders.flux:KleinTokenizer", causal=True, chat_template=True,
           joint=True, comfyui="0.33.0",
           note=_LLM_NOTE),
    Family("krea2", "Krea 2", ("Krea2Tokenizer",), ("qwen3vl_4b",), (("qwen3vl_4b",),), (("CLIPLoader", "krea2"),),
           "comfy.text_encoders.krea2:Krea2Tokenizer", causal=True, chat_template=True,
           template_prefix_stripped=True, joint=True, comfyui="0.33.0",
           note=_LLM_NOTE + " ComfyUI drops the system part of the template, so rows start at the prompt."),
    Family("hidream", "HiDream", ("HiDreamTokenizer",), ("l", "g", "t5xxl", "llama"), (("t5xxl",),),
           (("QuadrupleCLIPLoader", ""),), "comfy.text_encoders.hidream:HiDreamTokenizer", joint=True,
           extra_rows=(("conditioning_llama3", "llama"),),
           note="Rows are T5's; the Llama rows of every layer ride in the conditioning as 'conditioning_llama3'."),
    Family("hunyuan_image", "HunyuanImage 2.1", ("HunyuanImageTokenizer",), ("qwen25_7b",), (("qwen25_7b",),),
           (("DualCLIPLoader", "hunyuan_image"),), "comfy.text_encoders.hunyuan_image:HunyuanImageTokenizer",
           causal=True, chat_template=True, template_prefix_stripped=True, joint=True, optional=("byt5",),
           note=_LLM_NOTE + " ComfyUI drops the system part of the template, so rows start at the prompt. Quoted "
           "text is also encoded by ByT5 for the glyphs ('conditioning_byt5small'); Leakless leaves those rows alone."),
    Family("lumina2", "Lumina 2", ("LuminaTokenizer",), ("gemma2_2b",), (("gemma2_2b",),), (("CLIPLoader", "lumina2"),),
           causal=True, joint=True,
           note="Gemma-2-2B reads the prompt as written (no chat template; Lumina 2 workflows write a system prompt "
           "into it, whose tokens are rows too). Its tokenizer is read from the text encoder file, so the picker "
           "cannot show it: use Leakless Token Inspector."),
)

BY_ID = {f.id: f for f in FAMILIES}
NAMES = ", ".join(f.name for f in FAMILIES)


def names(which) -> str:
    """'FLUX.1 / Kontext / Krea and Chroma': the families for which `which(family)` holds, for messages."""
    chosen = [f.name for f in FAMILIES if which(f)]
    return ", ".join(chosen[:-1]) + (" and " if len(chosen) > 1 else "") + chosen[-1]


def loaders(which=lambda f: True) -> str:
    """'FLUX.1 / Kontext / Krea (DualCLIPLoader type flux), SDXL (CheckpointLoaderSimple, DualCLIPLoader type
    sdxl), ...': how the CLIP of each family for which `which(family)` holds is loaded, for tooltips."""
    def how(f):
        return ", ".join(f"{node} type {kind}" if kind else node for node, kind in f.loaders)

    return "; ".join(f"{f.name} ({how(f)})" for f in FAMILIES if which(f))


def family_of_tokenizer(tokenizer, keys) -> Family | None:
    """The family of a ComfyUI family tokenizer (``clip.tokenizer``) whose output has encoder `keys`: by the classes
    it is built from, the most derived first (a subclass made by a loader or another pack still matches), and only
    a family with exactly these encoders, less the optional ones it adds for some prompts (an unknown LLM tokenizer
    built on SD1Tokenizer is not SD1.5)."""
    keys = set(keys)
    for cls in type(tokenizer).__mro__:
        for f in FAMILIES:
            if cls.__name__ in f.tokenizer_classes and set(f.encoders) == keys - set(f.optional):
                return f
    return None

