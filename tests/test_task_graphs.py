"""CUDA graphs by default: every task call of a CUDA generator replays a graph per input signature.

The replayed calls must equal eager calls bit for bit (same kernels, same order), hand back
tensors of their own, fall back to eager execution where a graph cannot reproduce the call,
and keep at most ``max_captures`` captures. Needs a GPU: skipped elsewhere (CPU generators never
capture, which the first test checks everywhere).
"""

from __future__ import annotations

import pytest
import torch

import soat
from conftest import make_styles

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_cpu_generators_run_eagerly(g16):
    assert not g16.cuda_graphs.enabled
    g16.generate(make_styles(g16))
    assert len(g16.cuda_graphs) == 0


@pytest.fixture(scope="module")
def pair():
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a GPU")
    kwargs = dict(size=32, channel_multiplier=1, device="cuda", dtype="fp16")
    return soat.load("random:3", **kwargs), soat.load("random:3", cuda_graphs=False, **kwargs)  # soat.load's keyword


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
    before = len(graphed.cuda_graphs)
    first = TASKS[task](graphed, a, b)  # capture
    again = TASKS[task](graphed, b, a)  # replay with other values
    assert len(graphed.cuda_graphs) == before + 1
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
    before = len(graphed.cuda_graphs)
    torch.manual_seed(0)
    random = graphed.expand(a, "reflect", noise="random")
    torch.manual_seed(0)
    assert torch.equal(random, eager.expand(a, "reflect", noise="random"))
    leaves = [s.clone().requires_grad_(True) for s in a]
    graphed.generate(leaves).float().mean().backward()
    assert leaves[0].grad is not None
    graphed.generate([s.cpu() for s in a])  # inputs on the host: eager (moved by the task's checks)
    assert len(graphed.cuda_graphs) == before


@cuda
def test_warmup_captures_and_the_cache_is_bounded():
    G = soat.load("random:4", size=16, channel_multiplier=1, device="cuda", dtype="fp16")
    G.cuda_graphs._captures.max_captures = 3
    G.warmup("generate", batch=2)
    assert len(G.cuda_graphs) == 1
    for batch in (1, 3, 4, 5):
        G.warmup("generate", batch=batch)
    assert len(G.cuda_graphs) == 3
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
    from soat.runtime.cudagraph import CudaGraphedTask
    x = torch.randn(1024, 1024, device="cuda")
    task = CudaGraphedTask(lambda a: a @ a, check_inputs=False)
    want = x @ x
    assert torch.equal(task(x), want)  # captured
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU work queued ahead of the replay
    out = task(x)
    assert not torch.cuda.current_stream().query()  # returned while the GPU is still busy
    assert torch.equal(out, want)
    x[0, 0] = float("nan")
    assert torch.isnan(task(x)).any()  # and NaN inputs go through unreported


def test_the_old_names_still_work_and_warn(g16):
    with pytest.warns(DeprecationWarning, match="cuda_graphs"):
        assert g16.graphs is g16.cuda_graphs
    with pytest.warns(DeprecationWarning, match="cuda_graphed"):
        assert soat.graphed is soat.cuda_graphed


# ---- the batch policy: padded batches and warm-up sizes -----------------------------------------
def test_cuda_graph_batch_pads_to_few_shapes_and_little_waste():
    from soat.runtime.cuda_graph_tasks import cuda_graph_batch
    padded = [cuda_graph_batch(n) for n in range(1, 65)]
    assert sorted(set(padded)) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert all(n <= p for n, p in zip(range(1, 65), padded))
    assert all(p - n < 16 for n, p in zip(range(17, 65), padded[16:]))


def test_the_batch_policy_pads_only_where_calls_replay(g16):
    from types import SimpleNamespace

    from soat.runtime.cuda_graph_tasks import CudaGraphTasks

    class OnGpu:  # a generator as the policy sees one on a GPU with a capturable backend (nothing is captured)
        device, backend = torch.device("cuda"), SimpleNamespace(capturable=True)
    on_gpu = CudaGraphTasks(OnGpu(), True)
    assert on_gpu.enabled and [on_gpu.padded_batch(n) for n in (1, 3, 17, 48)] == [1, 4, 32, 48]
    assert on_gpu.warmup_batches(64) == [64, 48, 32, 16, 8, 4, 2, 1]  # largest first: it sizes the shared pool
    assert on_gpu.warmup_batches(5) == [8, 4, 2, 1]
    assert not g16.cuda_graphs.enabled
    assert [g16.cuda_graphs.padded_batch(n) for n in (1, 3, 17)] == [1, 3, 17]
    assert g16.cuda_graphs.warmup_batches(64) == [1]
