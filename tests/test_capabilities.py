"""The precision and backend tables (``soat.runtime.capabilities``) are the one statement of those facts: every
list of backends or precisions (the CLI's choices and help, the backend classes, ``soat.load``'s dispatch, the
README's tables and libsoat's dtype parsing) comes from them or agrees with them, so adding a backend or a
precision to one and not the others fails here."""

from __future__ import annotations

import argparse
import pathlib
import re

import pytest
import torch

import soat
from soat.runtime import capabilities as C
from soat.runtime.backends.aoti_backend import AotiBackend
from soat.runtime.backends.fast_backend import FastTorchBackend
from soat.runtime.backends.ort_backend import OrtBackend
from soat.runtime.backends.torch_backend import TorchBackend
from soat.runtime.backends.trt_backend import TensorRTBackend

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = (TorchBackend, FastTorchBackend, OrtBackend, TensorRTBackend, AotiBackend)


def test_every_backend_class_is_a_row_and_takes_its_attributes_from_it():
    assert sorted(cls.name for cls in CLASSES) == sorted(C.BACKEND_NAMES)
    for cls in CLASSES:
        spec = C.backend_spec(cls.name)
        assert (cls.differentiable, cls.capturable) == (spec.differentiable, spec.capturable), cls.name


def test_loader_dispatches_every_backend():
    source = (ROOT / "soat" / "loader.py").read_text()
    for cls in CLASSES:
        assert cls.__name__ in source, f"soat.load never makes a {cls.__name__}"


def _choices(parser: argparse.ArgumentParser, option: str) -> dict[str, tuple]:
    """``{subcommand: choices of option}`` over every subcommand that has it."""
    found = {}
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in (subparsers[0].choices.items() if subparsers else []):
        for action in sub._actions:
            if option in action.option_strings and action.choices is not None:
                found[name] = tuple(action.choices)
    return found


def test_cli_choices_and_help_come_from_the_tables():
    from soat.cli import build_parser
    parser = build_parser()
    backends, dtypes = _choices(parser, "--backend"), _choices(parser, "--dtype")
    differentiable = (C.AUTO, *(b.name for b in C.BACKENDS if b.differentiable))  # soat invert needs gradients
    assert backends and all(c == (differentiable if name == "invert" else C.BACKEND_CHOICES)
                            for name, c in backends.items()), backends
    assert dtypes and all(c == C.PRECISION_NAMES for c in dtypes.values()), dtypes
    from soat.options import BACKEND_HELP
    assert all(f"{b} (" in BACKEND_HELP for b in C.BACKEND_NAMES)


def _readme_table(heading_row: str) -> dict[str, list[str]]:
    """The README table whose header row starts with ``heading_row``: ``{first cell: other cells}``."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_row))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_readme_tables_match():
    backends = _readme_table("| backend | runs |")
    assert list(backends) == list(C.BACKEND_NAMES)
    for spec in C.BACKENDS:
        _, differentiable, capturable, devices = backends[spec.name]
        assert differentiable.startswith("yes" if spec.differentiable else "no"), spec.name
        assert capturable.startswith("yes" if spec.capturable else "no"), spec.name
        assert devices == ", ".join(spec.devices), spec.name
    precisions = _readme_table("| precision | also written |")
    assert list(precisions) == list(C.PRECISION_NAMES)
    for p in C.PRECISIONS:
        aliases, exports, backends_cell = precisions[p.name]
        assert aliases == ", ".join(f"`{a}`" for a in p.aliases)
        assert exports == ", ".join(p.export_formats) and backends_cell == ", ".join(p.backends), p.name


def test_libsoat_parses_every_aoti_precision():
    source = "\n".join(path.read_text() for path in (ROOT / "cpp" / "src").glob("*.cpp"))
    for name in C.export_precisions(C.AOTI_FORMAT):
        assert f'"{name}"' in source, f"libsoat does not parse dtype {name!r}"


@pytest.mark.parametrize("value, name", [("fp16", "fp16"), ("float16", "fp16"), (torch.bfloat16, "bf16")])
def test_precision_names_aliases_and_dtypes(value, name):
    assert C.precision(value).name == name


def test_unknown_precision_and_backend_are_one_line():
    with pytest.raises(soat.SoatError, match=r"dtype='int8' is not supported; use one of fp32, fp16, bf16"):
        soat.load("random:1", size=8, channel_multiplier=1, dtype="int8")
    with pytest.raises(soat.SoatError, match=r"backend='tpu' is unknown; use one of auto, torch, fast, "
                                              r"onnxruntime, tensorrt, aoti"):
        soat.load("random:1", size=8, channel_multiplier=1, backend="tpu")
    with pytest.raises(soat.SoatError, match=r"dtype=bf16 is not available with backend='onnxruntime'"):
        soat.load("random:1", size=8, channel_multiplier=1, backend="onnxruntime", dtype="bf16")


def test_graphs_keyword_still_works_and_warns():
    with pytest.warns(DeprecationWarning, match="cuda_graphs"):
        G = soat.load("random:1", size=8, channel_multiplier=1, graphs=False)
    assert re.search(r"size=8", repr(G))
