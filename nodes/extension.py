"""The node list ComfyUI registers. Node ids never change once released (saved workflows depend on them)."""

from comfy_api.latest import ComfyExtension, io

from .deleaker_nodes import DeLeaker, DeLeakerEncode, DeLeakerMasks
from .heatmap_nodes import AttentionHeatmap, HeatmapEncode, HeatmapShow
from .flow_nodes import LeakPatch, RedundantTokenMask, TokenTrace, TraceGrid, register_model_folder
from .inspector_nodes import TokenInspector
from .driver.routes import register_routes
from .driver.templates import publish_templates
from .tome_nodes import ToMeEncode, ToMeSemanticBinding


class LeaklessExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_model_folder()
        register_routes()
        publish_templates()
        return [TokenInspector, TokenTrace, TraceGrid, RedundantTokenMask, LeakPatch, DeLeakerEncode, DeLeaker,
                DeLeakerMasks, HeatmapEncode, AttentionHeatmap, HeatmapShow, ToMeEncode, ToMeSemanticBinding]
