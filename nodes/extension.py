"""The node list ComfyUI registers. Node ids never change once released (saved workflows depend on them)."""

from comfy_api.latest import ComfyExtension, io

from .deleaker_nodes import ENTITIES, MASKS, DeLeaker, DeLeakerEncode, DeLeakerMasks, EntitySpec, MaskResults
from .flow_nodes import LeakPatch, RedundantTokenMask, TokenTrace, TraceGrid, register_model_folder
from .heatmap_nodes import HEATMAPS, AttentionHeatmap, HeatmapEncode, HeatmapResults, HeatmapShow
from .inspector_nodes import TokenInspector
from .routes import register_routes
from .templates import publish_templates
from .tome_nodes import BINDING, BindingSpec, ToMeEncode, ToMeSemanticBinding
from .validation import register_custom_types

NODES = [TokenInspector, TokenTrace, TraceGrid, RedundantTokenMask, LeakPatch, DeLeakerEncode, DeLeaker,
         DeLeakerMasks, HeatmapEncode, AttentionHeatmap, HeatmapShow, ToMeEncode, ToMeSemanticBinding]
# what a value of each custom input type is: the class its producing nodes output (validation checks it)
CUSTOM_CLASSES = {ENTITIES.io_type: EntitySpec, MASKS.io_type: MaskResults, HEATMAPS.io_type: HeatmapResults,
                  BINDING.io_type: BindingSpec}


class LeaklessExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_model_folder()
        register_routes()
        publish_templates()
        register_custom_types(CUSTOM_CLASSES, NODES)
        return list(NODES)
