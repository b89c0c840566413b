"""``manifest.json`` of an export folder: the export contract's schema, and the checks before anything is loaded.

The manifest says everything a consumer of the folder needs (docs/contract.md#export-folders): the
layout and chain, the precision, every graph's file, sha256, inputs, outputs and symbolic shapes, the
fixed noise, the mean styles, and the run plan (``runs``: for every run of consecutive nodes, which
graph runs each node and which outputs the run keeps; ``graphs.run_plan`` states the rule once, the
exporters write it through ``soat.export.folder``, and the Python backends and libsoat read it).

A folder is accepted only when its manifest is of a known format version, has
exactly the known fields, describes the chain that its config implies, and every
file it lists exists with the listed sha256. Anything else is a ``SoatError``
naming the file and the fix (re-export), never a half-loaded model. Whatever is loaded
later is read through ``verified_bytes``: the bytes are hashed as read and used only when
they match, so a folder changed after it was checked cannot mix models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import SoatError
from .chain import TO_RGB, build_chain, style_channels
from .files import file_sha256
from .config import GeneratorConfig
from .capabilities import AOTI_FORMAT, AUTO, BACKENDS, ONNX_FORMAT, backend_spec, export_precisions
from .checks import spelled
from .graphs import (PlanStep, graph_ids, graph_io, linked_id, linked_ids,
                     run_plan, signature, Signature)

FORMAT = "soat-export"
# 5: the run plan (runs), each graph's symbolic shapes, mean styles in every folder; 4: AOTI folders hold the
# linked graphs; 3: each graph lists its channels_last inputs; 2: graph formats (onnx, aoti), the device and the
# mean styles; 1 (onnx only). Every older version is still read.
FORMAT_VERSION = 5
MANIFEST = "manifest.json"
NOISE_FILE = "noise.npz"
MEAN_STYLES_FILE = "mean_styles.npz"
GRAPH_SUFFIX = {ONNX_FORMAT: ".onnx", AOTI_FORMAT: ".pt2"}
FIELDS_V1 = ("format", "format_version", "exporter", "config", "dtype", "opset", "source", "chain",
             "style_channels", "graphs", "noise")
FIELDS_V2 = FIELDS_V1 + ("device", "mean_styles")
FIELDS = {1: FIELDS_V1, 2: FIELDS_V2, 3: FIELDS_V2, 4: FIELDS_V2, 5: FIELDS_V2 + ("runs", "endless")}
GRAPH_FIELDS_V1 = ("file", "sha256", "inputs", "outputs")
GRAPH_FIELDS_V3 = GRAPH_FIELDS_V1 + ("format", "channels_last")
GRAPH_FIELDS = {1: GRAPH_FIELDS_V1, 2: GRAPH_FIELDS_V1 + ("format",), 3: GRAPH_FIELDS_V3, 4: GRAPH_FIELDS_V3,
                5: GRAPH_FIELDS_V3 + ("shapes",)}
STEP_FIELDS = ("graph", "writes")
ENDLESS_FIELDS = ("span_width", "first", "later")
NOISE_FIELDS = ("file", "sha256", "shapes")
MEAN_STYLES_FIELDS = ("file", "sha256", "shape")
ANY_DEVICE = "any"  # ONNX graphs run anywhere; AOTI packages on the device they were compiled for
# The metadata key under which a graph file names its graph id (ONNX metadata_props, AOTI package metadata):
# a file copied over another graph's is refused by name. Files written before it have none and are checked by
# their inputs only.
GRAPH_ID_KEY = "soat_graph"


@dataclass(frozen=True)
class Manifest:
    """A verified export folder: its layout, precision, source and file names."""

    folder: str
    config: GeneratorConfig
    dtype: str
    opset: int
    source: dict
    graphs: dict[str, dict]
    noise: dict
    exporter: dict
    device: str = ANY_DEVICE
    mean_styles: dict | None = None
    format_version: int = FORMAT_VERSION
    runs: dict[tuple[int, int], tuple[PlanStep, ...]] | None = None

    @property
    def graph_format(self) -> str:
        """``onnx`` or ``aoti`` (every graph of a folder has the same format)."""
        return next(iter(self.graphs.values())).get("format", ONNX_FORMAT)

    def graph_path(self, graph_id: str) -> str:
        return os.path.join(self.folder, self.graphs[graph_id]["file"])

    def graph_sha256(self, graph_id: str) -> str:
        return self.graphs[graph_id]["sha256"]

    def graph_bytes(self, graph_id: str) -> bytes:
        """The graph file's bytes, checked against its sha256 as they are read (``verified_bytes``)."""
        if graph_id not in self.graphs:
            raise SoatError(f"graph {graph_id!r} is not in export {self.folder!r}")
        return verified_bytes(self.folder, self.graphs[graph_id], f"graph {graph_id!r}")

    def run_plan(self, first: int, last: int) -> tuple[PlanStep, ...]:
        """How ``chain[first:last]`` runs on this folder: the stored plan (format 5); for older folders the
        contract's rule over the graphs they hold."""
        if self.runs is not None:
            return self.runs[first, last]
        return run_plan(self.config, first, last, self.linked)

    @property
    def linked(self) -> bool:
        """The folder holds the linked graphs (``graphs.linked_ids``; AOTI exports from format 4 on)."""
        return all(gid in self.graphs for gid in linked_ids(self.config))

    def channels_last(self, graph_id: str) -> tuple[str, ...]:
        """The graph's inputs it reads in channels_last memory format (a compiled package reads its inputs with
        the strides it was compiled for); the others are contiguous."""
        return tuple(self.graphs[graph_id].get("channels_last", ()))


def graph_where(manifest: Manifest, graph_id: str) -> str:
    """How an error names a graph of an export folder: the graph, the folder and the file."""
    return f"graph {graph_id!r} of export {manifest.folder!r} ({manifest.graphs[graph_id]['file']})"


def export_graph_ids(config: GeneratorConfig, graph_format: str, version: int = FORMAT_VERSION) -> list[str]:
    """The graphs a folder holds: the chain's, mapping and styles; AOTI folders of format 4 on also the linked
    graphs."""
    ids = graph_ids(config)
    return ids + linked_ids(config) if graph_format == AOTI_FORMAT and version >= 4 else ids


def chain_record(config: GeneratorConfig) -> list[dict]:
    """The chain as JSON: node order, kind, sigma/W+/noise index, channels, resolution, up, tensor names."""
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(n).items()}
            for n in build_chain(config)]


def encode_runs(config: GeneratorConfig, plan: Callable[[int, int], tuple[PlanStep, ...]]) -> dict[str, list]:
    """The ``runs`` field: every run ``chain[first:last]`` (``1 <= first < last <= len(chain)``; the constant runs
    on its own) as ``"first:last" -> [{"graph", "writes"}]``."""
    n = len(build_chain(config))
    return {f"{first}:{last}": [{"graph": step.graph, "writes": list(step.writes)} for step in plan(first, last)]
            for first in range(1, n) for last in range(first + 1, n + 1)}


def graph_outputs(config: GeneratorConfig, graph_id: str, graph_format: str) -> tuple[str, ...]:
    """Output names inside a graph file (``graphs.signature``: ONNX renames an output that is also an input,
    ``x -> x_out``; AOTI does not)."""
    return tuple(signature(config, graph_id, graph_format)[1])


def _manifest_json(folder: str) -> tuple[dict, str]:
    """``folder``'s manifest as JSON, of a known format version with exactly its fields (no file checked yet),
    and how errors name it."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise SoatError(f"{folder!r} is not an export folder: it has no {MANIFEST}. "
                        "Create one with `soat export CHECKPOINT -o DIR`")
    try:
        with open(path) as f:
            m = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SoatError(f"{path!r} is not valid JSON ({e}); re-export the folder") from None
    where = f"{path!r}"
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise SoatError(f"{where} is not a SOAT export manifest (format must be {FORMAT!r})")
    _check_version(m.get("format_version"), where)
    _check_fields(m, FIELDS[m["format_version"]], where)
    return m, where


def _graph_format(m: dict, where: str) -> str:
    """The one graph format of every graph a manifest lists (format 1: onnx)."""
    formats = {ONNX_FORMAT} if m["format_version"] == 1 else {g.get("format") if isinstance(g, dict) else None
                                                              for g in m["graphs"].values()}
    if len(formats) != 1 or not formats <= set(GRAPH_SUFFIX):
        raise SoatError(f"{where}: graph formats {sorted(map(str, formats))} must be one of {sorted(GRAPH_SUFFIX)}, "
                        "the same for every graph; re-export the folder")
    return next(iter(formats))


def export_graph_format(source: str) -> str | None:
    """The graph format (``onnx``, ``aoti``) the manifest of the export folder ``source`` states, read without
    checking its files; None where ``source`` is not a folder holding a manifest."""
    if not (os.path.isdir(source) and os.path.isfile(os.path.join(source, MANIFEST))):
        return None
    return _graph_format(*_manifest_json(source))


def read_manifest(folder: str) -> Manifest:
    """Read and verify an export folder (format, fields, chain, every file's sha256)."""
    m, where = _manifest_json(folder)
    v1 = m["format_version"] == 1
    source = m["source"]
    if not isinstance(source, dict) or not all(isinstance(source.get(k), str) for k in ("name", "fingerprint")):
        raise SoatError(f"{where}: source {json.dumps(source)[:80]} must be an object with string 'name' and 'fingerprint'; "
                        "the manifest was edited. Re-export the folder")
    try:
        config = GeneratorConfig(**m["config"])
    except TypeError as e:
        raise SoatError(f"{where}: config {m['config']!r} is not a generator layout ({e})") from None
    if m["chain"] != chain_record(config) or m["style_channels"] != style_channels(config):
        raise SoatError(f"{where}: the chain does not match the {config.size}px layout of its config; "
                        "the manifest was edited. Re-export the folder")
    graph_format = _graph_format(m, where)
    dtypes = export_precisions(graph_format)
    if m["dtype"] not in dtypes:
        raise SoatError(f"{where}: dtype {m['dtype']!r} is not one of {dtypes}")
    expected = set(export_graph_ids(config, graph_format, m["format_version"]))
    if set(m["graphs"]) != expected:
        missing = sorted(expected - set(m["graphs"]))
        extra = sorted(set(m["graphs"]) - expected)
        raise SoatError(f"{where}: graph list does not match the layout (missing {missing}, unknown {extra}); "
                        "re-export the folder")
    for gid, g in m["graphs"].items():
        _check_fields(g, GRAPH_FIELDS[m["format_version"]], f"{where} graph {gid!r}")
        names = (list(graph_io(config, gid)[0]), list(graph_outputs(config, gid, graph_format)))
        if (g["inputs"], g["outputs"]) != names:
            raise SoatError(f"{where}: graph {gid!r} lists inputs {g['inputs']} / outputs {g['outputs']}, "
                            f"not {names[0]} / {names[1]}; re-export the folder")
        channels_last = g.get("channels_last", [])
        if not isinstance(channels_last, list) or not set(map(str, channels_last)) <= set(names[0]):
            raise SoatError(f"{where}: graph {gid!r} lists channels_last inputs {channels_last!r}, which must be a "
                            f"list of its inputs {names[0]}; re-export the folder")
        if channels_last and not (graph_format == AOTI_FORMAT and m.get("device") == "cuda"):
            raise SoatError(f"{where}: graph {gid!r} lists channels_last inputs {channels_last}, but only the packages "
                            "of a CUDA aoti export read channels_last inputs; the manifest was edited. Re-export the "
                            "folder")
        if "shapes" in g and g["shapes"] != shapes_record(signature(config, gid, graph_format)):
            raise SoatError(f"{where}: graph {gid!r} lists shapes that do not match its layout; re-export the folder")
        _check_file(folder, g, f"graph {gid!r}")
    runs = _read_runs(m["runs"], config, m["graphs"], where) if "runs" in m else None
    if "endless" in m:
        _check_endless(m["endless"], config, where)
    _check_fields(m["noise"], NOISE_FIELDS, f"{where} noise")
    _check_file(folder, m["noise"], "noise buffers")
    if not v1 and m["mean_styles"] is not None:
        _check_fields(m["mean_styles"], MEAN_STYLES_FIELDS, f"{where} mean_styles")
        _check_file(folder, m["mean_styles"], "mean styles")
    return Manifest(folder, config, m["dtype"], m["opset"], m["source"], m["graphs"], m["noise"], m["exporter"],
                    m.get("device", ANY_DEVICE), m.get("mean_styles"), m["format_version"], runs)


def _check_endless(record: object, config: GeneratorConfig, where: str) -> None:
    """The endless panorama's geometry (written for libsoat from ``tasks.panorama_geometry``): spans ``2R`` wide,
    span 0 giving columns ``first = [lo, hi)``, every later span ``later``, each a range inside the span."""
    _check_fields(record, ENDLESS_FIELDS, f"{where} endless")
    width = record["span_width"]
    ranges = [record["first"], record["later"]]
    if width != 2 * config.size or not all(
            isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r) and 0 <= r[0] < r[1] <= width
            for r in ranges):
        raise SoatError(f"{where}: endless {json.dumps(record)[:80]} is not a panorama geometry of its "
                        f"{config.size}px layout; re-export the folder")


def shapes_record(sig: Signature) -> dict[str, dict[str, list]]:
    """A graph's ``signature`` as the manifest records it: ``{"inputs": {name: dims}, "outputs": {...}}``."""
    inputs, outputs = sig
    return {"inputs": {k: list(v) for k, v in inputs.items()}, "outputs": {k: list(v) for k, v in outputs.items()}}


def _read_runs(runs: object, config: GeneratorConfig, graphs: dict, where: str) -> dict[tuple[int, int], tuple[PlanStep, ...]]:
    """The stored run plan, checked to be one the folder can execute (every run present, each step the node's
    graph or its linked graph, and every value a step reads given by an earlier one); any such plan is accepted,
    the rule that chose it is the exporter's."""
    chain = build_chain(config)
    keys = {f"{a}:{b}": (a, b) for a in range(1, len(chain)) for b in range(a + 1, len(chain) + 1)}
    if not isinstance(runs, dict) or set(runs) != set(keys):
        raise SoatError(f"{where}: runs must list every run of the {len(chain)}-node chain; re-export the folder")
    plans = {}
    for key, (first, last) in keys.items():
        steps = runs[key]
        if not isinstance(steps, list) or len(steps) != last - first:
            raise SoatError(f"{where}: run {key} must list {last - first} steps; re-export the folder")
        for step in steps:
            _check_fields(step, STEP_FIELDS, f"{where} run {key} step")
        plan = tuple(PlanStep(str(step["graph"]), tuple(map(str, step["writes"])) if isinstance(step["writes"], list)
                              else ()) for step in steps)
        problem = _plan_problem(config, chain[first:last], plan, graphs)
        if problem:
            raise SoatError(f"{where}: run {key} {problem}; re-export the folder")
        plans[first, last] = plan
    return plans


def _plan_problem(config: GeneratorConfig, nodes, plan: tuple[PlanStep, ...], graphs: dict) -> str | None:
    """Why ``plan`` cannot run ``nodes`` (None: it can): each step runs its node's graph or the node's linked graph
    (one the folder holds), keeps only outputs that graph gives, and reads only what an earlier step kept."""
    has_x, has_mod = True, False
    for node, step in zip(nodes, plan):
        linked = node.styled_conv and step.graph == linked_id(node.id)
        if step.graph not in graphs or not (linked or step.graph == node.id):
            return f"runs graph {step.graph!r} for node {node.id!r}"
        gives = graph_io(config, step.graph)[1]
        if not set(step.writes) <= set(gives) or (not linked and step.writes != gives):
            return f"keeps {list(step.writes)} from graph {step.graph!r}, which gives {list(gives)}"
        if not (has_x or (linked and has_mod)):
            return f"runs {step.graph!r} without its input"
        if linked:
            has_x, has_mod = "x" in step.writes, "next_x_mod" in step.writes
        elif node.kind != TO_RGB:
            has_mod = False
    return None if has_x else "ends without the features x"


def export_backend(source: str, backend: str, name: str = "backend") -> str:
    """The backend that runs ``source``. For an export folder, ``auto`` stands for the first backend of the graph
    format its manifest states (``capabilities.BACKENDS``: onnxruntime for onnx, aoti for aoti) and a backend that
    does not run that format is refused; anything else keeps ``backend``. ``name`` is how the caller spells the
    option (``backend`` in Python, ``--backend`` on the command line)."""
    graph_format = export_graph_format(source)
    if graph_format is not None and backend == AUTO:
        return _format_backends(graph_format)[0]
    if graph_format is not None:
        _check_runs_format(source, graph_format, backend, name)
    return backend


def check_format(manifest: Manifest, backend: str) -> None:
    """A backend runs exports of its own graph format only (``capabilities.BACKENDS``)."""
    _check_runs_format(manifest.folder, manifest.graph_format, backend, "backend")


def _format_backends(graph_format: str) -> list[str]:
    return [b.name for b in BACKENDS if b.graph_format == graph_format]


def _check_runs_format(folder: str, graph_format: str, backend: str, name: str) -> None:
    takes = _format_backends(graph_format)
    if backend in takes:
        return
    want = backend_spec(backend).graph_format
    raise SoatError(f"export {folder!r} holds {graph_format} graphs, which {spelled(name, backend)} does not run; "
                    f"leave {name} out or use {spelled(name, takes[0])}"
                    + (f", or export it with `soat export ... --format {want}`" if want else ""))


def load_mean_styles(manifest: Manifest) -> torch.Tensor | None:
    """sigma_bar stored at export, flat ``[1, total]`` fp32 (None where the export has none)."""
    if manifest.mean_styles is None:
        return None
    path = os.path.join(manifest.folder, manifest.mean_styles["file"])
    (flat,) = map(torch.from_numpy, _arrays(manifest.folder, manifest.mean_styles, "mean styles", ["mean_styles"]))
    if list(flat.shape) != manifest.mean_styles["shape"] or flat.shape != (1, sum(style_channels(manifest.config))):
        raise SoatError(f"{path!r}: mean styles of shape {list(flat.shape)} do not fit the manifest; re-export")
    return flat


def load_noise(manifest: Manifest) -> list[torch.Tensor]:
    """The fixed noise buffers ``[1, 1, r, r]`` (fp32), read without pickle."""
    path = os.path.join(manifest.folder, manifest.noise["file"])
    names = [f"noise_{i}" for i in range(manifest.config.num_noises)]
    noise = list(map(torch.from_numpy, _arrays(manifest.folder, manifest.noise, "noise buffers", names)))
    if [list(n.shape) for n in noise] != manifest.noise["shapes"]:
        raise SoatError(f"{path!r}: noise shapes {[list(n.shape) for n in noise]} differ from the manifest's")
    return noise


def check_matches(manifest: Manifest, dtype: str, size: int | None, channel_multiplier: int | None) -> None:
    """The export must be in ``dtype``; ``size``/``channel_multiplier``, where given, must match it."""
    c = manifest.config
    # one message for the API and the CLI: the fix names the option both ways
    if manifest.dtype != dtype:
        raise SoatError(f"export {manifest.folder!r} is {manifest.dtype} but {dtype} was asked for; load it as "
                        f"{manifest.dtype} (dtype={manifest.dtype!r}, --dtype {manifest.dtype}), or export again "
                        f"with --dtype {dtype}")
    if size is not None and size != c.size:
        raise SoatError(f"export {manifest.folder!r} holds a {c.size}px generator but size={size} was given; "
                        "leave size (--size) out")
    if channel_multiplier is not None and channel_multiplier != c.channel_multiplier:
        raise SoatError(f"export {manifest.folder!r} has channel_multiplier {c.channel_multiplier} but "
                        f"{channel_multiplier} was given; leave it (--channel-multiplier) out")


def verified_bytes(folder: str, record: dict, what: str) -> bytes:
    """The bytes of the file a manifest record lists, hashed as they are read and returned only when they match
    its sha256: a consumer keeps and uses exactly what was checked, so a folder re-exported or edited after
    ``read_manifest`` gives an error here, never a mix of two models."""
    path = os.path.join(folder, record["file"])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SoatError(f"{what}: cannot read {path!r} ({e.strerror or e}); the export folder changed after it was "
                        f"loaded. Load {folder!r} again") from None
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise SoatError(f"{what}: {path!r} no longer matches the sha256 it had when the export was loaded (the "
                        f"folder was re-exported or changed since); load {folder!r} again")
    return data


def _arrays(folder: str, record: dict, what: str, names: list[str]) -> list[np.ndarray]:
    """The named fp32 arrays of an ``.npz`` the manifest lists, parsed from its verified bytes without pickle; a
    missing array, an object array (it would need pickle) or another dtype is one ``SoatError``."""
    path = os.path.join(folder, record["file"])
    try:
        with np.load(io.BytesIO(verified_bytes(folder, record, what)), allow_pickle=False) as data:
            arrays = [data[name] for name in names]
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, SoatError):
            raise
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SoatError(f"{what}: {path!r} is not an .npz of the arrays {names[:3]}{'...' if len(names) > 3 else ''} "
                        f"({reason}); re-export the folder") from None
    for name, array in zip(names, arrays):
        if array.dtype != np.float32:
            raise SoatError(f"{what}: {path!r} holds {name} as {array.dtype}, not float32; re-export the folder")
    return arrays


def _check_version(version: object, where: str) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SoatError(f"{where}: format_version {version!r} is not a version number; re-export the folder")
    if version > FORMAT_VERSION:
        raise SoatError(f"{where} has format_version {version}, newer than this soat reads ({FORMAT_VERSION}); "
                        "upgrade soat, or re-export the checkpoint with this version")


def _check_fields(record: object, fields: tuple[str, ...], where: str) -> None:
    if not isinstance(record, dict):
        raise SoatError(f"{where} must be a JSON object; re-export the folder")
    unknown = sorted(set(record) - set(fields))
    missing = [k for k in fields if k not in record]
    if unknown or missing:
        problems = ([f"unknown fields {unknown}"] if unknown else []) + ([f"missing fields {missing}"] if missing else [])
        raise SoatError(f"{where} has {' and '.join(problems)}; it was not written by this exporter "
                        f"(format_version {FORMAT_VERSION}). Re-export the folder")


def _check_file(folder: str, record: dict, what: str) -> None:
    name = record["file"]
    if not isinstance(name, str) or os.path.basename(name) != name or name.startswith("."):
        raise SoatError(f"{what}: file name {name!r} must be a plain name inside the export folder")
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise SoatError(f"{what}: {name!r} is missing from export folder {folder!r}; re-export it")
    if file_sha256(path) != record["sha256"]:
        raise SoatError(f"{what}: {name!r} does not match its sha256 in the manifest (changed or corrupt since "
                        f"export); re-export {folder!r}")
