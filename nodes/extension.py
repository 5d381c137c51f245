"""The node list ComfyUI registers. Node ids never change once released (saved workflows depend on them)."""

from comfy_api.latest import ComfyExtension, io

from .deleaker_nodes import DeLeaker, DeLeakerEncode, DeLeakerMasks
from .driver.results import RunResults
from .driver.routes import register_routes
from .driver.schema import BINDING, ENTITIES, HEATMAPS, MASKS
from .driver.templates import publish_templates
from .driver.validation import register_custom_types
from .driver.prompts import register_model_folder
from .flow_nodes import LeakPatch, RedundantTokenMask
from .trace_nodes import TokenTrace, TraceGrid
from .heatmap_nodes import AttentionHeatmap, HeatmapEncode, HeatmapShow
from .inspector_nodes import TokenInspector
from .methods.phrases import Phrases
from .methods.tome_patch import BindingSpec
from .tome_nodes import ToMeEncode, ToMeSemanticBinding

NODES = [TokenInspector, TokenTrace, TraceGrid, RedundantTokenMask, LeakPatch, DeLeakerEncode, DeLeaker,
         DeLeakerMasks, HeatmapEncode, AttentionHeatmap, HeatmapShow, ToMeEncode, ToMeSemanticBinding]
# what a value of each custom input type is: the class its producing nodes output (validation checks it)
CUSTOM_CLASSES = {ENTITIES.io_type: Phrases, MASKS.io_type: RunResults, HEATMAPS.io_type: RunResults,
                  BINDING.io_type: BindingSpec}


class LeaklessExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_model_folder()
        register_routes()
        publish_templates()
        register_custom_types(CUSTOM_CLASSES, NODES)
        return list(NODES)
