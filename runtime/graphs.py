"""The graph contract: every graph's id, named inputs/outputs, dynamic axes and shapes.

One place says what every graph takes and gives, so that the backends, the exporter
and the export manifest agree. Graph ids are the chain's node ids plus ``mapping``
(``z [B, 512] -> w [B, 512]``) and ``styles`` (``wplus [B, n_latent, 512] -> styles [B, total]``).

AOTI exports add a *linked* graph per styled conv (``convs.3.linked``, ``linked_ids``): the conv on
its already modulated input ``x_mod``, whose epilogue also writes the next styled conv's modulated
input ``next_x_mod`` (from ``next_style``), as the fast path's ``run_chain`` does. A run of linked
graphs makes no modulation pass between layers. A linked graph gives ``x`` only where the chain reads
it next (a ToRGB follows, or no styled conv does) and ``next_x_mod`` only where a styled conv follows.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from .chain import CONST, TO_RGB, LayerNode, build_chain, style_channels
from .config import GeneratorConfig

MAPPING, STYLES = "mapping", "styles"
_LINKED = ".linked"  # suffix of a styled conv's linked graph

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


def linked_ids(config: GeneratorConfig) -> list[str]:
    """The linked graph of every styled conv, in chain order (module doc)."""
    return [linked_id(n.id) for n in build_chain(config) if n.styled_conv]


def linked_id(node_id: str) -> str:
    """The id of a styled conv's linked graph."""
    return node_id + _LINKED


def linked_node_id(graph_id: str) -> str | None:
    """The styled conv whose linked graph ``graph_id`` is; None for any other graph."""
    return graph_id[:-len(_LINKED)] if graph_id.endswith(_LINKED) else None


@lru_cache(maxsize=None)
def following_conv(config: GeneratorConfig, node_id: str) -> LayerNode | None:
    """The next styled conv after ``node_id`` in the chain (past a ToRGB), None after the last."""
    chain = build_chain(config)
    k = next(i for i, n in enumerate(chain) if n.id == node_id)
    return next((n for n in chain[k + 1:] if n.styled_conv), None)


def graph_io(config: GeneratorConfig, graph_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(input names, output names)`` of a graph, inputs in the order the graph takes them."""
    if graph_id == MAPPING:
        return ("z",), ("w",)
    if graph_id == STYLES:
        return ("wplus",), ("styles",)
    if (node_id := linked_node_id(graph_id)) is not None:
        return _linked_io(config, _node(config, node_id))
    node = _node(config, graph_id)
    return node.inputs, node.outputs


def _linked_io(config: GeneratorConfig, node: LayerNode) -> tuple[tuple[str, ...], tuple[str, ...]]:
    following = following_conv(config, node.id)
    chain = build_chain(config)
    after = chain[chain.index(node) + 1]
    gives_x = following is None or after.kind == TO_RGB
    return (("x_mod", "style", "noise") + (("next_style",) if following else ()),
            (("x",) if gives_x else ()) + (("next_x_mod",) if following else ()))


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
    node = _node(config, linked_node_id(graph_id) or graph_id)
    h = height or node.resolution // node.up
    w = width or node.resolution // node.up
    shapes = {"style": (batch, node.in_channels), "x": (batch, node.in_channels, h, w),
              "noise": (1, 1, *node.output_size(h, w)), "skip": (batch, 3, h // 2, w // 2)}
    shapes["x_mod"] = shapes["x"]
    following = following_conv(config, node.id)
    if following is not None:
        shapes["next_style"] = (batch, following.in_channels)
    return {name: shapes[name] for name in graph_io(config, graph_id)[0]}


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
