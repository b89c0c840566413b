"""The graph contract: every graph's id, named inputs/outputs, dynamic axes and shapes.

One place says what every graph takes and gives, so that the backends, the exporter
and the export manifest agree. Graph ids are the chain's node ids plus ``mapping``
(``z [B, 512] -> w [B, 512]``) and ``styles`` (``wplus [B, n_latent, 512] -> styles [B, total]``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from .chain import CONST, TO_RGB, LayerNode, build_chain, style_channels
from .config import GeneratorConfig

MAPPING, STYLES = "mapping", "styles"

Shape = tuple[int, ...]

# Symbolic axis names. The noise has its own batch axis: [1, 1, H, W] broadcasts over B.
_AXES = {
    "x": {0: "batch", 2: "height", 3: "width"},
    "skip": {0: "batch", 2: "skip_height", 3: "skip_width"},
    "style": {0: "batch"},
    "noise": {0: "noise_batch", 2: "out_height", 3: "out_width"},
    "z": {0: "batch"},
    "wplus": {0: "batch"},
    "w": {0: "batch"},
    "styles": {0: "batch"},
}
_OUT_AXES = {0: "batch", 2: "out_height", 3: "out_width"}


def graph_ids(config: GeneratorConfig) -> list[str]:
    """Every graph of an export: the chain in order, then ``mapping`` and ``styles``."""
    return [n.id for n in build_chain(config)] + [MAPPING, STYLES]


def graph_io(config: GeneratorConfig, graph_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(input names, output names)`` of a graph, inputs in the order the graph takes them."""
    if graph_id == MAPPING:
        return ("z",), ("w",)
    if graph_id == STYLES:
        return ("wplus",), ("styles",)
    node = _node(config, graph_id)
    return node.inputs, node.outputs


def onnx_outputs(config: GeneratorConfig, graph_id: str) -> tuple[str, ...]:
    """Output names inside the ONNX file: a name that is also an input gets ``_out`` (``x -> x_out``),
    since an ONNX graph cannot produce a value under an input's name."""
    inputs, outputs = graph_io(config, graph_id)
    return tuple(f"{name}_out" if name in inputs else name for name in outputs)


def dynamic_axes(config: GeneratorConfig, graph_id: str) -> dict[str, dict[int, str]]:
    """Symbolic axes of every input and output (ONNX names): batch, and height/width of every map."""
    inputs, outputs = graph_io(config, graph_id)
    axes = {name: dict(_AXES[name]) for name in inputs}
    for name, onnx_name in zip(outputs, onnx_outputs(config, graph_id)):
        axes[onnx_name] = dict(_OUT_AXES) if name in ("x", "rgb") else dict(_AXES[name])
    if inputs == ("style",):  # the constant: only its batch varies
        axes["x"] = {0: "batch"}
    return axes


def input_shapes(config: GeneratorConfig, graph_id: str, batch: int = 1, height: int | None = None,
                 width: int | None = None) -> dict[str, Shape]:
    """Input shapes of a graph for an ``x`` of ``height x width`` (default: the node's native size).

    The skip of a block's ToRGB is half the size; the noise has the output's size and batch 1.
    """
    if graph_id == MAPPING:
        return {"z": (batch, config.style_dim)}
    if graph_id == STYLES:
        return {"wplus": (batch, config.n_latent, config.style_dim)}
    node = _node(config, graph_id)
    h = height or node.resolution // node.up
    w = width or node.resolution // node.up
    shapes = {"style": (batch, node.in_channels), "x": (batch, node.in_channels, h, w),
              "noise": (1, 1, *node.output_size(h, w)), "skip": (batch, 3, h // 2, w // 2)}
    return {name: shapes[name] for name in node.inputs}


def example_shapes(config: GeneratorConfig, graph_id: str) -> dict[str, Shape]:
    """Tracing inputs: batch 2 and a small 4 x 8 map (H != W, so the tracer fuses no axes)."""
    return input_shapes(config, graph_id, batch=2, height=4, width=8)


def output_shape(config: GeneratorConfig, graph_id: str, shapes: dict[str, Sequence[int]]) -> Shape:
    """The shape of a graph's one output for the given input shapes (for preallocated outputs)."""
    if graph_id == MAPPING:
        return (shapes["z"][0], config.style_dim)
    if graph_id == STYLES:
        return (shapes["wplus"][0], sum(style_channels(config)))
    node = _node(config, graph_id)
    batch = shapes["style"][0]
    if node.kind == CONST:
        return (batch, node.out_channels, 4, 4)
    h, w = node.output_size(*shapes["x"][2:])
    return (batch, 3 if node.kind == TO_RGB else node.out_channels, h, w)


@lru_cache(maxsize=None)
def _nodes(config: GeneratorConfig) -> dict[str, LayerNode]:
    return {n.id: n for n in build_chain(config)}


def _node(config: GeneratorConfig, graph_id: str) -> LayerNode:
    nodes = _nodes(config)
    if graph_id not in nodes:
        raise KeyError(f"no graph {graph_id!r} in a {config.size}px export")
    return nodes[graph_id]
