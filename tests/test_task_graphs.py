"""CUDA graphs by default: every task call of a CUDA generator replays a graph per input signature.

The replayed calls must equal eager calls bit for bit (same kernels, same order), hand back
tensors of their own, fall back to eager execution where a graph cannot reproduce the call,
and keep at most ``max_graphs`` captures. Needs a GPU: skipped elsewhere (CPU generators never
capture, which the first test checks everywhere).
"""

from __future__ import annotations

import pytest
import torch

import soat
from conftest import make_styles

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_cpu_generators_run_eagerly(g16):
    assert not g16.graphs.enabled
    g16.generate(make_styles(g16))
    assert len(g16.graphs) == 0


@pytest.fixture(scope="module")
def pair():
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a GPU")
    kwargs = dict(size=32, channel_multiplier=1, device="cuda", dtype="fp16")
    return soat.load("random:3", **kwargs), soat.load("random:3", graphs=False, **kwargs)


TASKS = {
    "generate": lambda G, a, b: G.generate(a),
    "blend": lambda G, a, b: G.blend(a, b, "vertical"),
    "merge_extension": lambda G, a, b: G.merge_extension(a, b),
    "expand_fixed": lambda G, a, b: G.expand(a, "reflect", noise="fixed"),
    "blend_bbox": lambda G, a, b: G.blend_bbox(a, b, (4, 6, 20, 12)),
    "patch_swap": lambda G, a, b: G.patch_swap(a, b, ((0, 0, 16, 16), (16, 16, 16, 16))),
    "shift": lambda G, a, b: G.shift(a, (0, 0, 8, 8), [(16, 0)], layers=(8, 16)),
}


@cuda
@pytest.mark.parametrize("task", list(TASKS))
def test_replayed_call_equals_eager_call(pair, task):
    graphed, eager = pair
    a, b = make_styles(eager, 2, seed=1), make_styles(eager, 2, seed=2)
    before = len(graphed.graphs)
    first = TASKS[task](graphed, a, b)  # capture
    again = TASKS[task](graphed, b, a)  # replay with other values
    assert len(graphed.graphs) == before + 1
    assert torch.equal(first, TASKS[task](eager, a, b))
    assert torch.equal(again, TASKS[task](eager, b, a))


@cuda
def test_results_are_the_callers_own(pair):
    graphed, _ = pair
    a, b = make_styles(graphed, 1, seed=3), make_styles(graphed, 1, seed=4)
    x = graphed.generate(a)
    kept = x.clone()
    graphed.generate(b)
    assert torch.equal(x, kept)


@cuda
def test_calls_a_graph_cannot_reproduce_run_eagerly(pair):
    graphed, eager = pair
    a = make_styles(graphed, 1, seed=5)
    before = len(graphed.graphs)
    torch.manual_seed(0)
    random = graphed.expand(a, "reflect", noise="random")
    torch.manual_seed(0)
    assert torch.equal(random, eager.expand(a, "reflect", noise="random"))
    leaves = [s.clone().requires_grad_(True) for s in a]
    graphed.generate(leaves).float().mean().backward()
    assert leaves[0].grad is not None
    graphed.generate([s.cpu() for s in a])  # inputs on the host: eager (moved by the task's checks)
    assert len(graphed.graphs) == before


@cuda
def test_warmup_captures_and_the_cache_is_bounded():
    G = soat.load("random:4", size=16, channel_multiplier=1, device="cuda", dtype="fp16")
    G.graphs._graphed.max_graphs = 3
    G.warmup("generate", batch=2)
    assert len(G.graphs) == 1
    for batch in (1, 3, 4, 5):
        G.warmup("generate", batch=batch)
    assert len(G.graphs) == 3
    with pytest.raises(soat.SoatError, match="cannot be warmed up"):
        G.warmup("panorama")


@cuda
def test_nan_inputs_are_refused_on_replay(pair):
    graphed, _ = pair
    a = make_styles(graphed, 1, seed=6)
    graphed.generate(a)
    bad = [s.clone() for s in a]
    bad[3][0, 0] = float("nan")
    with pytest.raises(soat.SoatError, match="NaN"):
        graphed.generate(bad)


@cuda
def test_unchecked_replays_do_not_wait_for_the_gpu():
    """``check_inputs=False`` (the streaming graphs): no NaN flag, so no host sync after the replay."""
    from soat.runtime.cudagraph import GraphedTask
    x = torch.randn(1024, 1024, device="cuda")
    task = GraphedTask(lambda a: a @ a, check_inputs=False)
    want = x @ x
    assert torch.equal(task(x), want)  # captured
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU work queued ahead of the replay
    out = task(x)
    assert not torch.cuda.current_stream().query()  # returned while the GPU is still busy
    assert torch.equal(out, want)
    x[0, 0] = float("nan")
    assert torch.isnan(task(x)).any()  # and NaN inputs go through unreported
