"""The endless panorama: latents by index, column geometry, exact splits, the finite reference."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, gaussian_filter1d

import soat
from soat.runtime.tasks import endless_sampler as sampler
from soat.runtime.tasks import infinite as inf
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
    inf.clear_cache(G)
    whole = G.panorama_columns(3, start, width)
    assert whole.shape == (1, 3, SIZE, width)
    inf.clear_cache(G)
    cuts = [start, start + 7, start + 7 + SIZE + 3, start + width]  # three parts, one inside a span, one across
    parts = [G.panorama_columns(3, a, b - a) for a, b in zip(cuts, cuts[1:])]
    assert torch.equal(torch.cat(parts, 3), whole)
    single = torch.cat([G.panorama_columns(3, c, 1) for c in range(start, start + 20)], 3)
    assert torch.equal(single, whole[..., :20])


def test_only_covering_spans_are_computed(G):
    inf.clear_cache(G)
    start, width = 10 * SIZE + 3, 2 * SIZE
    G.panorama_columns(9, start, width)
    expected = {i for i, _, _ in geo.column_pieces(SIZE, start, width)}
    assert {k.index for k in inf.cached_spans(G)} == expected
    assert len(expected) == 3


def test_prefix_equals_the_finite_reference_panorama(G):
    n = 4
    lists = [inf.latent_styles(G, 2, i, 0.7) for i in range(n)]
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
    inf.clear_cache(G)
    a = G.panorama_columns(0, 0, 4, noise="random")
    b = G.panorama_columns(0, 0, 4, noise="random")
    assert a.shape == (1, 3, SIZE, 4) and not torch.equal(a, b)
    assert inf.cached_spans(G) == []


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
