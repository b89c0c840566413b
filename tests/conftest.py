"""Shared fixtures: small seeded generators (non-zero biases and noise weights) and style helpers.

Every generator here is the embedded random default (``soat.load("random:SEED")``), whose
biases, modulation biases and noise strengths are all non-zero, so every term of the layer
arithmetic shows in the images. Generators are session-scoped: tests must not mutate them
(``estimate_mean_styles`` tests load their own).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pytest
import torch

# Where the kernel tests put their tensors: on a GPU the Triton kernels compile and run on CUDA
# tensors, elsewhere on CPU tensors in Triton's interpreter. triton.jit reads TRITON_INTERPRET when
# a kernel module is imported (on the first Triton launch), so it is set here, before any test runs.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import soat  # noqa: E402

FULL_COMMAND = "python -m pytest -q --full"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true",
                     help="run the full suite: also the tests marked `full` (AOTInductor and C++ builds, the browser, "
                          "Ray, TensorRT-RTX engines, 256 px models, whole parameter sweeps)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "full: slow, or needs the test-full extra, .ci/install-browser.sh or "
                                       ".ci/build-cpp.sh: runs only with --full (the default run is the fast tier)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier (the default): tests marked ``full`` are deselected, so the summary counts them."""
    if config.getoption("--full"):
        return
    full = [item for item in items if item.get_closest_marker("full")]
    if full:
        config.hook.pytest_deselected(items=full)
        items[:] = [item for item in items if not item.get_closest_marker("full")]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if not config.getoption("--full"):
        terminalreporter.write_line(f"fast tier: run the full suite with `{FULL_COMMAND}` (README, Tests)")


def tiered(values: Iterable, *full) -> list:
    """``values`` as ``parametrize`` arguments with the ``full`` ones marked ``full``: the fast tier keeps the
    others as the representatives of the sweep. Tuples are unpacked, as for several argument names."""
    values = list(values)
    unknown = [v for v in full if v not in values]
    assert not unknown, f"tiered: {unknown} are not among the values"
    return [pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=pytest.mark.full) if v in full else v
            for v in values]


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


@pytest.fixture(scope="session")
def export8(g8, tmp_path_factory) -> str:
    """``g8`` exported to ONNX once for the session (an export costs seconds): tests that change an export
    change a copy of it."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return onnx_export(g8, tmp_path_factory, "export8")
