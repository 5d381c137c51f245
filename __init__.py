"""Leakless: training-free fixes for semantic leakage and attribute binding in FLUX and SDXL (ComfyUI node pack).

Entry point only. ComfyUI's loader calls ``comfy_entrypoint``; nothing is imported or patched before that.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes.extension import LeaklessExtension

    return LeaklessExtension()
