"""The endless panorama's latent sampler: latent ``j`` of a seed from ``(seed, j)`` alone.

Raw latents are Philox normals keyed by ``(seed, j)``; the smoothed latents are
scipy.ndimage's Gaussian (sigma 0.7, radius 3) over the raw ones, divided by the fixed
``NORMALISER`` (``endless``'s docstring has the full definition and its relation to the
reference sampler).

Public API: ``endless_latents``, ``latents_at``, ``raw_latent``, ``smoothing_weights``,
``WEIGHTS``, ``NORMALISER``, ``SIGMA``, ``TRUNCATE``, ``RADIUS``, ``SEED_LIMIT``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SIGMA = 0.7
TRUNCATE = 4.0
RADIUS = int(TRUNCATE * SIGMA + 0.5)  # scipy.ndimage's kernel radius: 3
SEED_LIMIT = 2 ** 64  # Philox's key holds any seed below this


def smoothing_weights(sigma: float = SIGMA, radius: int = RADIUS) -> np.ndarray:
    """``[2 * radius + 1]`` float64: scipy.ndimage's order-0 Gaussian kernel (sums to 1)."""
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


WEIGHTS = smoothing_weights()
NORMALISER = float(np.sqrt(np.sum(WEIGHTS ** 2)))  # expected RMS of the smoothed unit normals


def raw_latent(seed: int, j: int, dim: int = 512) -> np.ndarray:
    """Latent ``j`` before smoothing: ``[dim]`` float64 standard normals keyed by ``(seed, j)``."""
    bits = np.random.Philox(key=seed, counter=(j % 2 ** 64) << 128)
    return np.random.Generator(bits).standard_normal(dim)


def endless_latents(seed: int, first: int, count: int, dim: int = 512) -> np.ndarray:
    """Smoothed, normalised latents ``first .. first + count - 1``: ``[count, dim]`` float32.

    Each row is the same fixed sequence of elementwise operations on its own window,
    so a latent's value does not depend on ``first`` or ``count``.
    """
    raw = np.stack([raw_latent(seed, j, dim) for j in range(first - RADIUS, first + count + RADIUS)])
    out = np.zeros((count, dim))
    for k, w in enumerate(WEIGHTS):
        out += w * raw[k:k + count]
    return (out / NORMALISER).astype(np.float32)


def latents_at(keys: Sequence[tuple[int, int]], dim: int = 512) -> np.ndarray:
    """Latents of any ``(seed, index)`` pairs: ``[len(keys), dim]`` float32, row r that of ``keys[r]``.

    Each run of consecutive indices of one seed is one ``endless_latents`` call, so its raw
    latents are drawn once (a latent drawn alone costs ``2 * RADIUS + 1`` raw ones); the rows
    are those of ``endless_latents(seed, index, 1)`` whatever the other keys are.
    """
    out = np.empty((len(keys), dim), dtype=np.float32)
    for seed, first, rows in _consecutive_runs(keys):
        out[rows] = endless_latents(seed, first, len(rows), dim)
    return out


def _consecutive_runs(keys: Sequence[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """``(seed, first index, rows of keys)`` for each run of consecutive indices of one seed."""
    runs: list[tuple[int, int, list[int]]] = []
    for row in sorted(range(len(keys)), key=keys.__getitem__):
        seed, index = keys[row]
        if runs and runs[-1][0] == seed and runs[-1][1] + len(runs[-1][2]) == index:
            runs[-1][2].append(row)
        else:
            runs.append((seed, index, [row]))
    return runs
