"""Shared fixtures: small seeded generators (non-zero biases and noise weights) and style helpers.

Every generator here is the embedded random default (``soat.load("random:SEED")``), whose
biases, modulation biases and noise strengths are all non-zero, so every term of the layer
arithmetic shows in the images. Generators are session-scoped: tests must not mutate them
(``estimate_mean_styles`` tests load their own).
"""

from __future__ import annotations

import os

import pytest
import torch

# Where the kernel tests put their tensors: on a GPU the Triton kernels compile and run on CUDA
# tensors, elsewhere on CPU tensors in Triton's interpreter. triton.jit reads TRITON_INTERPRET when
# a kernel module is imported (on the first Triton launch), so it is set here, before any test runs.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import soat  # noqa: E402


@pytest.fixture
def exact_fp32(monkeypatch):
    """On CUDA, cuDNN runs fp32 convs in TF32 (a 10-bit mantissa) by default: tests that compare
    fp32 paths to tight tolerances use this to make every fp32 conv true fp32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (``b`` the expected value)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, f"shapes differ: {list(a.shape)} vs {list(b.shape)}"
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def onnx_export(source, tmp_path_factory, name: str, **kwargs) -> str:
    """``source`` (a generator or checkpoint) exported to ONNX in a fresh temporary folder ``name``."""
    import soat.export
    folder = tmp_path_factory.mktemp(name)
    soat.export.export(source, folder, progress=False, **kwargs)
    return str(folder)


def as_format(manifest: dict, version: int) -> dict:
    """A current manifest (a dict) rewritten as an older format's: the fields format 5 added are dropped (run plan,
    panorama geometry, graph shapes)."""
    manifest["format_version"] = version
    if version < 5:
        manifest.pop("runs", None)
        manifest.pop("endless", None)
        for g in manifest["graphs"].values():
            g.pop("shapes", None)
    return manifest


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
