"""The endless panorama: latents by index, column geometry, exact splits, the finite reference, its public face."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, gaussian_filter1d

import soat
from soat.runtime.tasks import endless as task
from soat.runtime.tasks import endless_sampler as sampler
from soat.runtime.tasks import panorama_geometry as geo
from soat.runtime.tasks.panorama_geometry import panorama_width

SIZE = 8


@pytest.fixture(scope="module")
def G():
    G = soat.load("random:0", size=SIZE, channel_multiplier=1)
    G.estimate_mean_styles(torch.randn(2000, 512, generator=torch.Generator().manual_seed(0)))  # cheaper sigma_bar
    return G


def test_weights_are_scipys_kernel():
    impulse = np.zeros(15)
    impulse[7] = 1.0
    np.testing.assert_allclose(sampler.WEIGHTS, gaussian_filter1d(impulse, 0.7)[7 - sampler.RADIUS:8 + sampler.RADIUS], rtol=1e-12)
    assert sampler.RADIUS == 3
    assert sampler.NORMALISER == pytest.approx(np.sqrt(np.sum(sampler.WEIGHTS ** 2)))


def test_latents_match_scipy_filter_away_from_the_ends():
    raw = np.stack([sampler.raw_latent(11, j) for j in range(20)])
    ref = gaussian_filter(raw, [0.7, 0], mode="wrap")[3:17] / sampler.NORMALISER
    np.testing.assert_allclose(sampler.endless_latents(11, 3, 14), ref, rtol=0, atol=1e-6)


def test_latents_depend_only_on_seed_and_index():
    whole = sampler.endless_latents(5, -4, 12)
    assert np.array_equal(sampler.endless_latents(5, 1, 3), whole[5:8])
    assert not np.array_equal(sampler.endless_latents(6, 1, 3), whole[5:8])
    # neighbouring raw latents come from disjoint counter ranges, not shifted copies of one stream
    a, b = sampler.raw_latent(5, 0), sampler.raw_latent(5, 1)
    assert not np.isin(a, b).any()
    # the fixed normaliser keeps unit variance, as the reference's global RMS does
    assert np.sqrt(np.mean(sampler.endless_latents(5, 0, 400).astype(np.float64) ** 2)) == pytest.approx(1, abs=0.03)


def test_the_public_face_publishes_the_tasks_own_objects():
    from soat.runtime import endless
    assert endless.__all__ and all(hasattr(endless, name) for name in endless.__all__)
    assert endless.spans is task.spans and endless.SpanKey is task.SpanKey and endless.stitch is geo.stitch
    assert endless.span_pad(SIZE) == 2 * SIZE // 4


@pytest.mark.parametrize("size", [8, 16, 256])
def test_column_pieces_follow_the_reference_stitching(size):
    # the first N spans of the reference layout, flattened to (span, local column) per output column
    n = 6
    ref = [(i, c) for i, (lo, hi) in enumerate(geo.span_columns(size, i) for i in range(n)) for c in range(lo, hi)]
    for start, width in [(0, 1), (0, len(ref)), (size + size // 2 - 1, 3), (7, 2 * size + 5), (len(ref) - 9, 9)]:
        pieces = geo.column_pieces(size, start, width)
        got = [(i, c) for i, lo, hi in pieces for c in range(lo, hi)]
        assert got == ref[start:start + width]
        assert all(hi > lo for _, lo, hi in pieces)


def test_splits_equal_the_whole_range(G):
    start, width = 5, 41
    task.clear_cache(G)
    whole = G.panorama_columns(3, start, width)
    assert whole.shape == (1, 3, SIZE, width)
    task.clear_cache(G)
    cuts = [start, start + 7, start + 7 + SIZE + 3, start + width]  # three parts, one inside a span, one across
    parts = [G.panorama_columns(3, a, b - a) for a, b in zip(cuts, cuts[1:])]
    assert torch.equal(torch.cat(parts, 3), whole)
    single = torch.cat([G.panorama_columns(3, c, 1) for c in range(start, start + 20)], 3)
    assert torch.equal(single, whole[..., :20])


def test_only_covering_spans_are_computed(G):
    task.clear_cache(G)
    start, width = 10 * SIZE + 3, 2 * SIZE
    G.panorama_columns(9, start, width)
    expected = {i for i, _, _ in geo.column_pieces(SIZE, start, width)}
    assert {k.index for k in task.cached_spans(G)} == expected
    assert len(expected) == 3


def test_prefix_equals_the_finite_reference_panorama(G):
    n = 4
    lists = [task.latent_styles(G, 2, i, 0.7) for i in range(n)]
    finite = G.panorama(lists)
    endless = G.panorama_columns(2, 0, panorama_width(SIZE, n))
    p = 2 * SIZE // 4
    assert torch.equal(finite[..., :-p], endless[..., :-p])
    assert not torch.equal(finite[..., -p:], endless[..., -p:])  # the reference ends; the endless one goes on


def test_seeds_and_truncation_change_the_image(G):
    a = G.panorama_columns(0, 0, 12)
    assert not torch.equal(a, G.panorama_columns(1, 0, 12))
    assert not torch.equal(a, G.panorama_columns(0, 0, 12, truncation=0.5))
    assert a.abs().max() <= 1


def test_random_noise_is_drawn_per_call_and_not_cached(G):
    task.clear_cache(G)
    a = G.panorama_columns(0, 0, 4, noise="random")
    b = G.panorama_columns(0, 0, 4, noise="random")
    assert a.shape == (1, 3, SIZE, 4) and not torch.equal(a, b)
    assert task.cached_spans(G) == []


@pytest.mark.parametrize("kwargs, needle", [
    (dict(seed=-1, start=0, width=4), "seed=-1"),
    (dict(seed=2 ** 64, start=0, width=4), "seed="),
    (dict(seed=1.5, start=0, width=4), "seed=1.5"),
    (dict(seed=0, start=-3, width=4), "start=-3"),
    (dict(seed=0, start=True, width=4), "start=True"),
    (dict(seed=0, start=0, width=0), "width=0"),
    (dict(seed=0, start=0, width=4, truncation=float("nan")), "truncation=nan"),
])
def test_bad_arguments(G, kwargs, needle):
    with pytest.raises(soat.SoatError, match=needle.replace(".", r"\.").replace("+", r"\+")):
        G.panorama_columns(**kwargs)


# ---- sigma in fixed-batch chunks (issue 17) ---------------------------------------------------
def _small(backend: str, dtype: str) -> soat.Generator:
    G = soat.load("random:3", size=32, channel_multiplier=1, backend=backend, dtype=dtype)
    G.estimate_mean_styles(torch.randn(500, 512, generator=torch.Generator().manual_seed(1)))  # cheaper sigma_bar
    return G


@pytest.mark.parametrize("backend, dtype", [("torch", "float32"), ("fast", "float32"), ("fast", "float16")])
def test_batched_sigma_equals_the_single_latent_sigma(backend, dtype):
    G = _small(backend, dtype)
    targets = [(4, 0, 0.7), (4, 17, 0.7), (9, 5, 0.7)]
    single = {}
    for key in targets:
        task.clear_cache(G)
        single[key] = task.latent_styles(G, *key)
    # the targets at other rows, among other companions: sorted by (seed, index) the first batch puts
    # them at rows 3 and 20 of its first chunk and row 5 of its padded third; the second at rows 0, 1
    # of its first chunk and row 10 of its padded second
    batches = [[(s, i, 0.7) for s in (4, 5, 6) for i in range(-3, 20)] + [(9, 5, 0.7)],
               [(9, 5, 0.7), (4, 17, 0.7), (4, 0, 0.7)] + [(7, i, 0.7) for i in range(40)]]
    for keys in batches:
        task.clear_cache(G)
        got = task.latent_styles_batch(G, keys)
        assert set(got) == set(keys)
        for key in targets:
            assert all(torch.equal(a, b) for a, b in zip(got[key], single[key])), (key, len(keys))
    # and sigma is that of the right latent (another batch's kernels: equal up to rounding)
    z = torch.from_numpy(sampler.endless_latents(4, 17, 1))
    direct = G.styles(z, 0.7)
    assert [s.shape for s in single[(4, 17, 0.7)]] == [s.shape for s in direct]
    tolerance = 1e-5 if G.dtype == torch.float32 else 1e-2
    for a, b in zip(single[(4, 17, 0.7)], direct):
        torch.testing.assert_close(a.float(), b.float(), rtol=tolerance, atol=tolerance)


def test_latents_at_draws_each_run_once_and_equals_one_latent_at_a_time(monkeypatch):
    keys = [(3, 5), (2, 0), (3, 6), (3, 4), (2, -2), (3, 9), (2, 1)]
    alone = np.concatenate([sampler.endless_latents(seed, index, 1) for seed, index in keys])
    draws = []
    real = sampler.endless_latents

    def endless_latents(seed, first, count, dim):
        draws.append((seed, first, count))
        return real(seed, first, count, dim)
    monkeypatch.setattr(sampler, "endless_latents", endless_latents)
    assert np.array_equal(sampler.latents_at(keys), alone)
    assert sorted(draws) == [(2, -2, 1), (2, 0, 2), (3, 4, 3), (3, 9, 1)]  # one draw per run of indices


def test_spans_compute_sigma_in_few_fixed_batch_calls(G, monkeypatch):
    batches, merged = [], []
    real = G.styles
    monkeypatch.setattr(G, "styles", lambda z, truncation=1.0: batches.append(z.shape[0]) or real(z, truncation))

    def merge_extension(g, s1, s2, noise):  # records its sigma; the spans' pixels are other tests' business
        merged.append((s1, s2))
        return torch.zeros(s1[0].shape[0], 3, g.size, 2 * g.size)
    monkeypatch.setattr(task, "merge_extension", merge_extension)
    keys = [task.SpanKey(seed, i, 0.7) for seed in (21, 22, 23) for i in range(20)]  # 63 latents
    task.clear_cache(G)
    task.spans(G, keys)
    assert batches == [task.STYLE_BATCH] * math.ceil(63 / task.STYLE_BATCH)
    task.spans(G, keys[1:])  # every sigma is cached now: no call
    assert len(batches) == math.ceil(63 / task.STYLE_BATCH)
    # each span got its own latents' sigma, in key order
    s1, s2 = merged[0]
    for b, key in enumerate(keys):
        first, second = task.latent_styles(G, *key), task.latent_styles(G, key.seed, key.index + 1, key.truncation)
        assert all(torch.equal(x[b:b + 1], y) for x, y in zip(s1, first))
        assert all(torch.equal(x[b:b + 1], y) for x, y in zip(s2, second))


def test_spans_copy_out_each_run_of_equal_columns_once(G):
    keys = [task.SpanKey(1, i, 0.7) for i in (3, 0, 4, 5, 0)]
    task.clear_cache(G)
    got = task.spans(G, keys)
    for key, part in zip(keys, got):
        lo, hi = geo.span_columns(SIZE, key.index)
        assert part.shape == (1, 3, SIZE, hi - lo)
        torch.testing.assert_close(part, task.span(G, key), rtol=0, atol=1e-5)
    # neighbours with the same columns share one copy (S_0's columns differ: a run of their own)
    storages = [part.untyped_storage().data_ptr() for part in got]
    assert storages[2] == storages[3] and len(set(storages)) == 4


def test_streaming_replays_follow_the_generators_cuda_graph_setting(monkeypatch):
    """A generator loaded with graphs=False, or whose backend cannot be captured (ONNX Runtime, TensorRT, aoti),
    runs the streaming calls eagerly even on CUDA."""
    from soat.runtime.tasks.endless_cache import caches, replayed
    G = soat.load("random:0", size=8, channel_multiplier=1)
    monkeypatch.setattr(G, "device", torch.device("cuda"))  # as if on a GPU; G.cuda_graphs.enabled stays False
    assert not G.cuda_graphs.enabled
    assert replayed(G, lambda g, x: x + 1, torch.ones(2)).tolist() == [2.0, 2.0]
    assert caches(G).cuda_graphs is None


def test_the_lru_drops_the_least_recently_used_and_makes_room_before_making():
    from soat.runtime.lru import LRU
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.peek("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)
    assert cache.keys() == ["a", "c"] and cache.peek("b") is None
    seen = []
    assert cache.get("d", lambda: seen.append(cache.keys()) or 4) == 4
    assert seen == [["c"]]  # "a" went before "d" was made
    assert cache.get("d", lambda: 5) == 4 and len(cache) == 2
    unbounded = LRU(None)
    for i in range(100):
        unbounded.put(i, i)
    assert len(unbounded) == 100
