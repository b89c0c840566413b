"""Shared fixtures: small seeded generators (non-zero biases and noise weights) and style helpers.

Every generator here is the embedded random default (``soat.load("random:SEED")``), whose
biases, modulation biases and noise strengths are all non-zero, so every term of the layer
arithmetic shows in the images. Generators are session-scoped: tests must not mutate them
(``estimate_mean_styles`` tests load their own).
"""

from __future__ import annotations

import pytest
import torch

import soat


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (``b`` the expected value)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, f"shapes differ: {list(a.shape)} vs {list(b.shape)}"
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def make_styles(G: soat.Generator, batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """Untruncated sigma list ``[[batch, C_k]]`` from seeded z (the global RNG is left alone)."""
    z = torch.randn(batch, G.config.style_dim, generator=torch.Generator().manual_seed(seed))
    return G.styles(z)


def pick(styles: list[torch.Tensor], i: int) -> list[torch.Tensor]:
    """Sample ``i`` of a batched sigma list, as a batch of one."""
    return [s[i:i + 1] for s in styles]


@pytest.fixture(scope="session")
def g8() -> soat.Generator:
    return soat.load("random:8", size=8, channel_multiplier=1)


@pytest.fixture(scope="session")
def g16() -> soat.Generator:
    return soat.load("random:16", size=16, channel_multiplier=1)


@pytest.fixture(scope="session")
def g32() -> soat.Generator:
    return soat.load("random:1", size=32, channel_multiplier=1)


@pytest.fixture(scope="session")
def g32b() -> soat.Generator:
    """A second 32px generator of the same layout (translation's generator 2)."""
    return soat.load("random:5", size=32, channel_multiplier=1)


@pytest.fixture(scope="session")
def g16b() -> soat.Generator:
    """A second 16px generator of the same layout (translation's generator 2)."""
    return soat.load("random:5", size=16, channel_multiplier=1)


@pytest.fixture(scope="session")
def g256() -> soat.Generator:
    """The embedded default itself (``random`` = seed 0, 256px, cm 2)."""
    return soat.load("random")
