"""The node list ComfyUI registers. Node ids never change once released (saved workflows depend on them)."""

from comfy_api.latest import ComfyExtension, io

from .inspector_nodes import TokenInspector


class LeaklessExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TokenInspector]
