"""The shape plan (issue 15): derived from the chain and the tasks' geometry, it must agree with the
shapes the tasks really pass to a backend (recorded on the torch backend of a 32 px model), and every
plan must fall inside the engine profiles (the documented envelope) at 32 and 256 px."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

import soat
from soat.runtime.graphs import graph_ids, graph_io
from soat.runtime.shape_plan import (TASKS, WIDEN_MODES, check_in_profile, profile_shapes, shape_plan, signature,
                                     task_envelope)
from conftest import make_styles
from test_tasks import recording

BATCH = 2


def _recorded(rec) -> dict:
    """Each graph's input signatures as the backend got them (a chain run also hands non-ToRGB nodes the
    current RGB as ``skip``; a graph reads only its own inputs, ``graph_io``)."""
    seen = defaultdict(set)
    for gid, inputs, _ in rec.calls:
        names = graph_io(rec.config, gid)[0]
        seen[gid].add(signature({n: tuple(inputs[n].shape) for n in names}))
    return dict(seen)


def _run(task: str, G, G2, s1, s2, noise: str, **args):
    """Run ``task`` on recording copies of G (and G2 for translate); returns what each recorder saw."""
    g, rec = recording(G)
    if task == "translate":
        g2, rec2 = recording(G2)
        soat.translate(g, g2, s1, s2, noise=noise)
        return [_recorded(rec), _recorded(rec2)]
    calls = {
        "generate": lambda: g.generate(s1, noise=noise),
        "blend": lambda: g.blend(s1, s2, noise=noise, **args),
        "merge": lambda: g.merge(s1, s2, noise=noise),
        "merge_extension": lambda: g.merge_extension(s1, s2, noise=noise),
        "panorama": lambda: g.panorama([s1, s2, s1], noise=noise),
        "expand": lambda: g.expand(s1, noise=noise, **args),
        "blend_bbox": lambda: g.blend_bbox(s1, s2, box=(4, 4, 8, 6), noise=noise),
        "blend_mask": lambda: g.blend_mask(s1, s2, torch.rand(1, 1, g.size, g.size), noise=noise),
        "patch_swap": lambda: g.patch_swap(s1, s2, boxes=((0, 0, 8, 8), (16, 16, 8, 8)), noise=noise),
        "shift": lambda: g.shift(s1, source_box=(0, 0, 4, 4), targets=[(8, 8)], noise=noise),
        "styles": lambda: g.styles(torch.randn(BATCH, g.config.style_dim)),
    }
    calls[task]()
    return [_recorded(rec)]


# every task with fixed noise (every blend and expand mode); random noise where it changes the noise shapes
# (batch B at native size, widened maps). 16 px models keep it quick; patch swap needs 32 px.
CASES = [(t, {}, "fixed") for t in TASKS if t not in ("blend", "expand")] \
    + [("blend", {"mode": m}, "fixed") for m in ("horizontal", "vertical")] \
    + [("expand", {"mode": m}, "fixed") for m in WIDEN_MODES] \
    + [("generate", {}, "random"), ("merge_extension", {}, "random"), ("expand", {"mode": "vertical"}, "random"),
       ("expand", {"mode": "reflect"}, "random")]


@pytest.mark.parametrize("task,args,noise", CASES, ids=[f"{t}-{'-'.join(a.values())}-{n}" for t, a, n in CASES])
def test_plan_matches_the_shapes_tasks_pass(request, task, args, noise):
    G, G2 = (request.getfixturevalue("g32"), None) if task == "patch_swap" else \
        (request.getfixturevalue("g16"), request.getfixturevalue("g16b"))
    s1, s2 = make_styles(G, BATCH, 0), make_styles(G, BATCH, 1)
    plan = shape_plan(G.config, task, BATCH, noise, **args)
    for seen in _run(task, G, G2, s1, s2, noise, **args):
        assert seen == plan


@pytest.mark.parametrize("size", [32, 256])
def test_every_plan_lies_inside_the_profiles(size):
    config = soat.GeneratorConfig(size=size, channel_multiplier=2 if size == 256 else 1)
    envelope = task_envelope(config, max_batch=8)
    assert set(envelope) == set(graph_ids(config))  # every graph is planned by some task
    for gid, signatures in envelope.items():
        profile = profile_shapes(config, gid, max_batch=8)
        for sig in signatures:
            shapes = dict(sig)
            if "noise" in shapes:  # the backend gives the noise the batch of x
                shapes["noise"] = (shapes["x"][0], *shapes["noise"][1:])
            check_in_profile(gid, shapes, profile)
    # vertical expand and merges reach the profile's 2x corners
    hi = profile_shapes(config, "convs.3", 8)["x"][2]
    assert {signature({"x": (8, hi[1], hi[2], hi[3] // 2)}), signature({"x": (8, hi[1], hi[2] // 2, hi[3])})} <= \
        {tuple((n, s) for n, s in sig if n == "x") for sig in envelope["convs.3"]}


def test_outside_the_profile_is_a_soat_error_naming_node_shape_profile():
    config = soat.GeneratorConfig(size=32, channel_multiplier=1)
    profile = profile_shapes(config, "convs.2", max_batch=4)
    shapes = {"x": (1, 512, 8, 24), "style": (1, 512), "noise": (1, 1, 16, 48)}
    with pytest.raises(soat.SoatError, match=r"graph 'convs.2': input 'noise' of shape \[1, 1, 16, 48\] is outside "
                                             r"the profile \(min \[1, 1, 16, 16\], max \[4, 1, 32, 32\]\)"):
        check_in_profile("convs.2", shapes, profile)
    with pytest.raises(soat.SoatError, match="takes no argument 'width'"):
        shape_plan(config, "merge", width=3)
    with pytest.raises(soat.SoatError, match="not an expand mode"):
        shape_plan(config, "expand", mode="sideways")
