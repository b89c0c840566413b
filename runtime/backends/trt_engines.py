"""The TensorRT engine cache: build an engine per graph, keep it with a record, load it only when
the record vouches for it.

``<export>/engines/<graph id>.<key>.engine`` with a JSON record beside it. The record holds what
an engine depends on (graph sha256, flavour, TensorRT version, target, precision, max batch,
profile), its key (sha256 of those) and the engine file's sha256. An engine is loaded only when
its record matches field by field, the engine file matches its sha256 (a truncated or swapped
file does not) and, on RTX, TensorRT-RTX calls it valid on this GPU; otherwise it is rebuilt with
a warning naming the reason (``soat engines --check`` refuses instead), never loaded blindly.

Engines are written atomically (the engine, then its record, each under a temporary name then renamed), one
builder at a time per engine: a builder holds ``<graph id>.<key>.lock`` and looks again once it has it, so
processes that want the same missing engine build it once and the others use it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Callable, Sequence

from ...errors import SoatError, os_error
from ..files import file_sha256, write_atomic
from ..filelock import locked
from ..manifest import Manifest
from ..shape_plan import MAX_BATCH, Profile, profile_shapes
from .trt_flavours import MODULES, Flavour, make_logger

ENGINE_DIR = "engines"  # under the export folder
RECORD_FIELDS = ("graph_sha256", "flavour", "tensorrt", "target", "precision", "max_batch", "profile")


def engine_record(graph_sha256: str, flavour: str, tensorrt: str, target: str, precision: str,
                  max_batch: int, profile: Profile) -> dict:
    """What an engine depends on (``tensorrt``: the module's version; ``target``: the flavour's build
    target), plus ``key``: the sha256 of those fields."""
    record = {"graph_sha256": graph_sha256, "flavour": flavour, "tensorrt": tensorrt, "target": target,
              "precision": precision, "max_batch": max_batch,
              "profile": {name: [list(s) for s in shapes] for name, shapes in sorted(profile.items())}}
    record["key"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def engine_paths(engine_dir: str, graph_id: str, record: dict) -> tuple[str, str]:
    """``(engine file, record file)`` for a graph and its record."""
    stem = os.path.join(engine_dir, f"{graph_id}.{record['key'][:16]}")
    return stem + ".engine", stem + ".json"


def read_record(record_path: str) -> dict | str:
    """The record at ``record_path``, or why it cannot be read."""
    try:
        with open(record_path) as f:
            found = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"its record is unreadable ({e})"
    return found if isinstance(found, dict) else "its record is not a JSON object"


def stale_reason(engine_path: str, record_path: str, expected: dict) -> str | None:
    """Why the cached engine may not be loaded (None: it matches ``expected`` and is intact)."""
    if not os.path.isfile(engine_path):
        return "no cached engine"
    if not os.path.isfile(record_path):
        return f"{os.path.basename(engine_path)} has no record beside it"
    found = read_record(record_path)
    if isinstance(found, str):
        return found
    diffs = [f"{k}: cached {found.get(k)!r} != expected {expected[k]!r}"
             for k in (*RECORD_FIELDS, "key") if found.get(k) != expected[k]]
    if diffs:
        return "it was built for something else (" + "; ".join(diffs) + ")"
    size = os.path.getsize(engine_path)
    if found.get("engine_bytes") != size:
        return f"the engine file has {size} bytes, its record says {found.get('engine_bytes')} (truncated or replaced)"
    if found.get("engine_sha256") != file_sha256(engine_path):
        return "the engine file does not match the sha256 in its record"
    return None


def find_engine(engine_dir: str, graph_id: str, wanted: dict, usable: Callable[[dict], bool],
                excluded: Sequence[str] = ()) -> tuple[tuple[str, dict] | None, list[str]]:
    """A cached engine of ``graph_id`` whose record has the ``wanted`` fields and passes ``usable``.

    Returns ``((engine path, record), [])`` or ``(None, reasons the candidates were refused)``.
    Every candidate is checked in full (``stale_reason`` against its own fields); engines in
    ``excluded`` (refused by the caller) are skipped.
    """
    refused = []
    for record_path in sorted(glob.glob(os.path.join(glob.escape(engine_dir), f"{glob.escape(graph_id)}.*.json"))):
        found = read_record(record_path)
        if isinstance(found, str) or not all(found.get(k) == v for k, v in wanted.items()) or not usable(found):
            continue
        try:
            expected = engine_record(**{k: found.get(k) for k in RECORD_FIELDS})
            engine_path, own_record = engine_paths(engine_dir, graph_id, expected)
        except (TypeError, AttributeError):
            refused.append(f"{os.path.basename(record_path)}: malformed record")
            continue
        if engine_path in excluded:
            continue
        reason = "its key does not match its fields" if own_record != record_path else \
            stale_reason(engine_path, record_path, expected)
        if reason is None:
            return (engine_path, expected), []
        refused.append(f"{os.path.basename(record_path)}: {reason}")
    return None, refused


def build_engine(flavour: Flavour, onnx_bytes: bytes, graph_id: str, profile: Profile, precision: str,
                 targets: Sequence[str]) -> bytes:
    """Parse the ONNX graph (its verified bytes) and build a serialized engine for ``profile`` and ``targets``."""
    trt = flavour.trt
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(flavour.network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SoatError(f"{MODULES[flavour.name]}'s ONNX parser rejected graph {graph_id!r}: {errors}")
    config = builder.create_builder_config()
    flavour.configure(config, precision, targets)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SoatError(f"{MODULES[flavour.name]} could not build an engine for graph {graph_id!r} "
                        f"({', '.join(targets)}): {'; '.join(logger.errors) or 'no error logged'}")
    return bytes(plan)


def ensure_engine(flavour: Flavour, manifest: Manifest, graph_id: str, engine_dir: str, targets: Sequence[str],
                  max_batch: int = MAX_BATCH, check: bool = False, force: bool = False) -> tuple[str, dict, str]:
    """The cached engine of ``graph_id`` for ``targets``, built (or rebuilt) when missing or stale.

    Returns ``(engine path, record, what happened)``: ``"cached"``, ``"built"`` or
    ``"rebuilt: <reason>"``. With ``check`` nothing is built: a missing or stale engine is a ``SoatError``;
    ``force`` rebuilds an intact one (the flavour refused it on this GPU).
    """
    profile = profile_shapes(manifest.config, graph_id, max_batch)
    expected = engine_record(manifest.graph_sha256(graph_id), flavour.name, flavour.version, ",".join(targets),
                             manifest.dtype, max_batch, profile)
    engine_path, record_path = engine_paths(engine_dir, graph_id, expected)
    reason = "refused on this GPU" if force else stale_reason(engine_path, record_path, expected)
    if reason is None:
        return engine_path, expected, "cached"
    if check:
        raise SoatError(f"the engine of {graph_id!r} ({os.path.basename(engine_path)}) is refused: {reason}")
    engine_folder(engine_dir)
    with locked(engine_path[:-len(".engine")] + ".lock"):
        if not force and stale_reason(engine_path, record_path, expected) is None:
            return engine_path, expected, "cached"  # another process built it while this one waited
        plan = build_engine(flavour, manifest.graph_bytes(graph_id), graph_id, profile, manifest.dtype, targets)
        write_engine(engine_path, record_path, plan, expected)
    return engine_path, expected, "built" if reason == "no cached engine" else f"rebuilt: {reason}"


def engine_folder(engine_dir: str, create: bool = True) -> str:
    """The engine cache folder, created if missing (with ``create``); one that is a file, or cannot be made, is one
    line."""
    if os.path.lexists(engine_dir) and not os.path.isdir(engine_dir):
        raise SoatError(f"{engine_dir!r} is not a folder, so no engine can be cached there; remove it (soat makes "
                        "the engine folder itself)")
    if not create:
        return engine_dir
    try:
        os.makedirs(engine_dir, exist_ok=True)
    except OSError as e:
        raise os_error(e, f"creating the engine folder {engine_dir!r}") from None
    return engine_dir


def write_engine(engine_path: str, record_path: str, plan: bytes, record: dict) -> None:
    """Engine first, then its record (with the engine's sha256 and size), each under a temporary name
    then ``os.replace``: a record always vouches for a whole file."""
    engine_folder(os.path.dirname(engine_path))
    try:
        write_atomic(engine_path, plan)
        full = dict(record, engine_sha256=hashlib.sha256(plan).hexdigest(), engine_bytes=len(plan))
        write_atomic(record_path, json.dumps(full, indent=1).encode())
    except OSError as e:
        raise os_error(e, f"writing the engine {engine_path!r}") from None
