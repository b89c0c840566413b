"""The shape plan: which input shapes every graph sees for a task and its arguments, and the
engine profiles (the documented envelope) that cover every plan.

The plan is derived from the chain (``LayerNode.output_size``, ``graphs.input_shapes``) and
each task's geometry, never by running a task:

- **native** (``generate``, ``blend`` in both modes, ``blend_bbox``, ``blend_mask``,
  ``patch_swap``, ``shift``, ``translate``): every node at its native size. Boxes, masks,
  targets and swap regions move values, not shapes.
- **merged** (``merge``, ``merge_extension``, ``panorama``; the endless panorama's spans are
  ``merge_extension`` calls): the constant and ``conv1`` native, then the two ``conv1``
  outputs side by side, so every later node sees twice the native width (``tasks/blend.py``).
- **expand**: native through the 8x8 block (``to_rgbs.0``), then features and RGB skip
  widened by the mode (``triton_kernels.widen.widened_size``: 2x width, 2x height for
  ``vertical``) (``tasks/expand.py``).
- **styles**: ``mapping`` (``z [B, 512]``) and ``styles`` (``wplus [B, n_latent, 512]``).

Noise: ``"fixed"`` feeds the ``[1, 1, r, r]`` buffer where the map is native and a
``[B, 1, H, W]`` widened copy elsewhere (``noise.widen_noise``); ``"random"`` draws
``[B, 1, H, W]``. Explicit noise lists are the caller's shapes and are not planned (engines
take noise at the batch of ``x`` whatever was given).

The envelope (``profile_shapes``): batch 1 to ``max_batch`` (chain graphs; 4096 for the
mapping and affine graphs), every map from its native size to twice its native height and
width. ``outside_profile`` says why a set of shapes is not inside a profile.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

from ..errors import SoatError
from ..triton_kernels.widen import MODES as WIDEN_MODES, widened_size
from .chain import TO_RGB, build_chain
from .config import GeneratorConfig
from .graphs import MAPPING, STYLES, Shape, input_shapes

MAX_BATCH = 16  # chain engines' default largest batch; larger batches run in chunks
LATENT_MAX_BATCH = 4096  # mapping/styles: Generator.estimate_mean_styles maps z 4096 at a time

Signature = tuple[tuple[str, Shape], ...]  # (input name, shape), sorted by name
Plan = dict[str, set[Signature]]  # graph id -> every input signature it sees
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)

NATIVE, MERGED, EXPAND, LATENT = "native", "merged", "expand", "latent"
# task -> (geometry, the arguments that may be given; only expand's ``mode`` changes shapes)
TASKS = {
    "generate": (NATIVE, ()),
    "blend": (NATIVE, ("mode",)),
    "blend_bbox": (NATIVE, ("box", "pose_align", "num_blend")),
    "blend_mask": (NATIVE, ("mask", "pose_align", "num_blend")),
    "patch_swap": (NATIVE, ("boxes", "swap")),
    "shift": (NATIVE, ("source_box", "targets", "layers", "strength")),
    "translate": (NATIVE, ("num_swap", "alpha", "early_alpha")),  # each of the two generators
    "merge": (MERGED, ()),
    "merge_extension": (MERGED, ()),
    "panorama": (MERGED, ("n",)),  # n - 1 merge_extension spans
    "expand": (EXPAND, ("mode",)),
    "styles": (LATENT, ()),
}
MERGE_AFTER = "conv1"  # merges put the two conv1 outputs side by side
EXPAND_AFTER = "to_rgbs.0"  # tasks/expand.py's WIDEN_AFTER
NOISE_MODES = ("fixed", "random")


def signature(shapes: dict[str, Shape]) -> Signature:
    return tuple(sorted((name, tuple(int(d) for d in shape)) for name, shape in shapes.items()))


def shape_plan(config: GeneratorConfig, task: str, batch: int = 1, noise: str = "fixed", **arguments) -> Plan:
    """Every input signature each graph sees when ``task`` runs at ``batch`` with ``arguments``.

    Args:
        task: a key of ``TASKS``.
        batch: the batch of the task's style lists.
        noise: ``"fixed"`` or ``"random"``.
        arguments: the task's own arguments (see ``TASKS``); only ``expand``'s ``mode``
            (default ``"reflect"``) changes shapes.
    """
    if task not in TASKS:
        raise SoatError(f"task={task!r} has no shape plan; use one of {', '.join(TASKS)}")
    geometry, allowed = TASKS[task]
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        raise SoatError(f"{task} takes no argument {unknown[0]!r} (its arguments: {', '.join(allowed) or 'none'})")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise SoatError(f"batch={batch!r} must be an integer >= 1")
    if noise not in NOISE_MODES:
        raise SoatError(f"noise={noise!r}: the shape plan knows {', '.join(NOISE_MODES)}")
    if geometry == LATENT:
        return {MAPPING: {signature(input_shapes(config, MAPPING, batch))},
                STYLES: {signature(input_shapes(config, STYLES, batch))}}
    if geometry == MERGED:
        return _walk(config, batch, noise, MERGE_AFTER, lambda h, w: (h, 2 * w))
    if geometry == EXPAND:
        mode = arguments.get("mode", "reflect")
        if mode not in WIDEN_MODES:
            raise SoatError(f"mode={mode!r} is not an expand mode; use one of {', '.join(WIDEN_MODES)}")
        return _walk(config, batch, noise, EXPAND_AFTER, lambda h, w: widened_size(h, w, mode))
    return _walk(config, batch, noise, None, None)


def _walk(config: GeneratorConfig, batch: int, noise: str, widen_after: str | None,
          widen: Callable[[int, int], tuple[int, int]] | None) -> Plan:
    """Follow the chain's map size from the 4x4 constant, widening features and skip after ``widen_after``."""
    chain = build_chain(config)
    plan: Plan = defaultdict(set)
    plan[chain[0].id].add(signature(input_shapes(config, chain[0].id, batch)))
    height = width = chain[0].resolution
    for node in chain[1:]:
        shapes = input_shapes(config, node.id, batch, height, width)
        out_h, out_w = node.output_size(height, width)
        if "noise" in shapes:
            native = (out_h, out_w) == (node.resolution, node.resolution)
            shapes["noise"] = (1 if noise == "fixed" and native else batch, 1, out_h, out_w)
        plan[node.id].add(signature(shapes))
        if node.kind != TO_RGB:
            height, width = out_h, out_w
        if node.id == widen_after:
            height, width = widen(height, width)
    return dict(plan)


def task_envelope(config: GeneratorConfig, max_batch: int = MAX_BATCH) -> Plan:
    """The union of every task's plan at batch 1 and ``max_batch``, both noise modes and every expand mode."""
    union: Plan = defaultdict(set)
    for task in TASKS:
        modes = WIDEN_MODES if task == "expand" else (None,)
        for batch in sorted({1, max_batch}):
            for noise in NOISE_MODES:
                for mode in modes:
                    args = {"mode": mode} if mode else {}
                    for gid, sigs in shape_plan(config, task, batch, noise, **args).items():
                        union[gid] |= sigs
    return dict(union)


def profile_shapes(config: GeneratorConfig, graph_id: str, max_batch: int = MAX_BATCH) -> Profile:
    """``{input: (min, opt, max)}``: batch 1 to ``max_batch``, each map 1x to 2x its native H and W.

    The tasks widen maps at most twofold (merges and panorama spans double W, expand
    doubles W, or H for ``vertical``); the optimum is batch 1 at the native size. The
    noise's batch is the batch of ``x`` (the backend expands a ``[1, 1, H, W]`` noise).
    """
    if graph_id in (MAPPING, STYLES):
        max_batch = max(max_batch, LATENT_MAX_BATCH)
    profile = {}
    for name, lo in input_shapes(config, graph_id).items():
        hi = (max_batch, *lo[1:]) if len(lo) < 4 else (max_batch, lo[1], 2 * lo[2], 2 * lo[3])
        profile[name] = (lo, lo, hi)
    return profile


def outside_profile(shapes: dict[str, Shape], profile: Profile) -> str | None:
    """Why ``shapes`` do not fit ``profile`` (None: every input lies within its min and max)."""
    if set(shapes) != set(profile):
        return f"inputs {sorted(shapes)} are not the engine's {sorted(profile)}"
    for name, shape in sorted(shapes.items()):
        lo, _, hi = profile[name]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(lo) or any(not a <= d <= b for d, a, b in zip(shape, lo, hi)):
            return f"input {name!r} of shape {list(shape)} is outside the profile (min {list(lo)}, max {list(hi)})"
    return None


def check_in_profile(graph_id: str, shapes: dict[str, Shape], profile: Profile) -> None:
    """A ``SoatError`` naming the graph, the shape and the profile when ``shapes`` do not fit it."""
    reason = outside_profile(shapes, profile)
    if reason is not None:
        raise SoatError(f"graph {graph_id!r}: {reason}. The engines cover batch 1..max batch and maps up to twice "
                        "the native height and width (the documented task envelope); run this call on "
                        "backend='torch' or 'onnxruntime'")
