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

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from .capabilities import ONNX_FORMAT
from .chain import CONST, TO_RGB, LayerNode, build_chain, style_channels
from .config import GeneratorConfig

MAPPING, STYLES = "mapping", "styles"
_LINKED = ".linked"  # suffix of a styled conv's linked graph

Shape = tuple[int, ...]
# A dimension of a graph file's signature: a size, or a symbol ("batch", "height") or a multiple of one ("2*height")
SymDim = int | str


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


@dataclass(frozen=True)
class PlanStep:
    """One node of a run of layers: the graph that runs it and the outputs the run keeps from it."""

    graph: str
    writes: tuple[str, ...]


@lru_cache(maxsize=None)
def run_plan(config: GeneratorConfig, first: int, last: int, linked: bool = True) -> tuple[PlanStep, ...]:
    """How the run of nodes ``chain[first:last]`` executes: one step per node, in order.

    This is the one statement of the linked-run rule; the exporter writes it into the manifest
    (``runs``), the aoti backend and libsoat read it from there, the fast backend follows it as is.
    A styled conv runs its linked graph where that saves a modulation pass (its input is already
    modulated, or the run goes on to the next styled conv) unless the run reads an ``x`` the linked
    graph does not give (an upsampling conv that ends the run). It writes ``x`` where the run reads it
    next (a ToRGB follows, or the run ends) and ``next_x_mod`` where the run holds the next styled conv.
    ``linked=False``: every node runs its own graph (folders without linked graphs).
    """
    chain = build_chain(config)
    if not 0 < first < last <= len(chain):
        raise ValueError(f"no run {first}:{last} in a chain of {len(chain)} nodes")
    steps, modulated = [], False
    for k in range(first, last):
        node = chain[k]
        reads_x = k == last - 1 or chain[k + 1].kind == TO_RGB
        following = following_conv(config, node.id)
        holds_next = following is not None and chain_index(config, following.id) < last
        use_linked = (linked and node.styled_conv and (modulated or holds_next)
                      and not (reads_x and "x" not in graph_io(config, linked_id(node.id))[1]))
        if use_linked:
            writes = (("x",) if reads_x else ()) + (("next_x_mod",) if holds_next else ())
            steps.append(PlanStep(linked_id(node.id), writes))
            modulated = holds_next
        else:
            steps.append(PlanStep(node.id, node.outputs))
            modulated = modulated and node.kind == TO_RGB  # a ToRGB leaves the modulated features as they are
    return tuple(steps)


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


Signature = tuple[dict[str, tuple[SymDim, ...]], dict[str, tuple[SymDim, ...]]]


def signature(config: GeneratorConfig, graph_id: str, graph_format: str) -> Signature:
    """``(inputs, outputs)`` of a graph file, by their names in the file, with symbolic dimensions.

    Both exporters build their dynamic axes from this and the manifest records it. Batch is ``batch``
    everywhere; ONNX graphs give every map its own symbols (``noise_batch``, ``out_height``: ONNX
    Runtime and TensorRT need no relations), AOTI graphs state the relations ``torch.export`` checks:
    the noise takes the batch of ``x`` and an upsampling conv's output size (``2*height``), and a block
    ToRGB's ``x`` is twice its ``skip`` (``2*skip_height``).
    """
    if graph_id == MAPPING:
        return {"z": ("batch", config.style_dim)}, {"w": ("batch", config.style_dim)}
    if graph_id == STYLES:
        return ({"wplus": ("batch", config.n_latent, config.style_dim)},
                {"styles": ("batch", sum(style_channels(config)))})
    node = _node(config, linked_node_id(graph_id) or graph_id)
    onnx = graph_format == ONNX_FORMAT
    output_names = onnx_outputs(config, graph_id) if onnx else graph_io(config, graph_id)[1]
    c_in, c_out = node.in_channels, (3 if node.kind == TO_RGB else node.out_channels)
    if node.kind == CONST:
        return {"style": ("batch", c_in)}, {output_names[0]: ("batch", c_out, 4, 4)}
    if "skip" in node.inputs:
        h, w = ("height", "width") if onnx else ("2*skip_height", "2*skip_width")
        out = ("out_height", "out_width") if onnx else (h, w)
        return ({"x": ("batch", c_in, h, w), "skip": ("batch", 3, "skip_height", "skip_width"),
                 "style": ("batch", c_in)}, {output_names[0]: ("batch", 3, *out)})
    up = "" if node.up == 1 else f"{node.up}*"
    out = ("out_height", "out_width") if onnx else (f"{up}height", f"{up}width")
    inputs = {"x_mod" if graph_id != node.id else "x": ("batch", c_in, "height", "width"), "style": ("batch", c_in)}
    if "noise" in node.inputs:
        inputs["noise"] = ("noise_batch", 1, *out) if onnx else ("batch", 1, *out)
    following = following_conv(config, node.id)
    if graph_id != node.id and following is not None:  # a linked graph (AOTI only) takes the next conv's style
        inputs["next_style"] = ("batch", following.in_channels)
    return inputs, {name: ("batch", c_out, *out) for name in output_names}


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


def chain_index(config: GeneratorConfig, node_id: str) -> int:
    """The position of a node in the chain (runs are addressed as ``chain[first:last]``)."""
    return _positions(config)[node_id]


@lru_cache(maxsize=None)
def _positions(config: GeneratorConfig) -> dict[str, int]:
    return {n.id: k for k, n in enumerate(build_chain(config))}


@lru_cache(maxsize=None)
def _nodes(config: GeneratorConfig) -> dict[str, LayerNode]:
    return {n.id: n for n in build_chain(config)}


def _node(config: GeneratorConfig, graph_id: str) -> LayerNode:
    nodes = _nodes(config)
    if graph_id not in nodes:
        raise KeyError(f"no graph {graph_id!r} in a {config.size}px export")
    return nodes[graph_id]
