"""What every export folder holds besides its graphs, written by one module for both formats.

Both exporters (``onnx_export``, ``aoti_export``) write their graph files into a folder and then
call ``finish_folder``: the fixed noise (``noise.npz``), the mean styles (``mean_styles.npz``: sigma_bar,
so truncation at load needs no sampling and centres where the checkpoint's does) and, last, the
manifest (``soat.runtime.manifest`` reads it; docs/contract.md#export-folders says what it holds).
``atomic_folder`` builds a folder under a temporary name and swaps it into place (see there: the lock, and the
sweep of what killed exports left).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Iterator, Sequence

import numpy as np
import torch

from .. import version
from ..errors import SoatError, os_error
from ..runtime.chain import style_channels
from ..runtime.files import file_sha256
from ..runtime.filelock import locked, remove_unheld
from ..runtime.generator import Generator
from ..runtime.graph_modules import graph_module
from ..runtime.graphs import MAPPING, STYLES, graph_io, linked_ids, run_plan, signature
from ..runtime.manifest import (FORMAT, FORMAT_VERSION, GRAPH_SUFFIX, MANIFEST, MEAN_STYLES_FILE,
                                NOISE_FILE, chain_record, encode_runs, export_graph_ids, graph_outputs,
                                shapes_record)
from ..runtime.sources import load_weights
from ..runtime.styles import cached_mean_w, mean_style_z, mean_w, mean_w_key
from ..runtime.tasks.panorama_geometry import span_columns
from ..runtime.weights import StyleGAN2Weights


@dataclasses.dataclass(frozen=True)
class Source:
    """What an export is made from: the weights, their fixed noise, and the name and fingerprint recorded."""

    weights: StyleGAN2Weights
    noise: Sequence[torch.Tensor]
    name: str
    fingerprint: str


def resolve_source(source: object, size: int | None, channel_multiplier: int | None) -> Source:
    """An export source: a checkpoint path, ``random[:SEED]``, or a Generator that holds its weights."""
    from ..runtime.backends.fast_backend import FastTorchBackend
    from ..runtime.backends.torch_backend import TorchBackend
    if isinstance(source, Generator):
        if not isinstance(source.backend, (TorchBackend, FastTorchBackend)):
            raise SoatError(f"export needs a Generator that holds its weights (torch or fast backend; this one runs "
                            f"on {source.backend.name}); pass its checkpoint path instead")
        return Source(source.backend.weights, source.fixed_noise, source.source, source.fingerprint)
    if not isinstance(source, (str, os.PathLike)):
        raise SoatError(f"source={source!r} must be a checkpoint path, 'random[:SEED]' or a torch/fast-backend "
                        "Generator")
    name = os.fspath(source)
    weights, fingerprint = load_weights(name, size, channel_multiplier)
    return Source(weights, weights.fixed_noise(), name, fingerprint)


def exporter_record() -> dict:
    """Who wrote the folder: the soat and torch versions (AOTI packages load only in the torch that built them)."""
    return {"soat": version.__version__, "torch": torch.__version__}


def finish_folder(folder: str, source: Source, graph_format: str, dtype: str, opset: int | None, device: str,
                  graph_sha: dict[str, str], channels_last: dict[str, tuple[str, ...]] | None = None) -> str:
    """Write the noise, the mean styles and then the manifest of a folder whose graph files are in place;
    returns the manifest's path."""
    config = source.weights.config
    noise = write_noise(source.noise, os.path.join(folder, NOISE_FILE))
    mean = write_mean_styles(source.weights, source.fingerprint, os.path.join(folder, MEAN_STYLES_FILE))
    channels_last = channels_last or {}
    graphs = {gid: {"file": f"{gid}{GRAPH_SUFFIX[graph_format]}", "sha256": graph_sha[gid],
                    "inputs": list(graph_io(config, gid)[0]), "outputs": list(graph_outputs(config, gid, graph_format)),
                    "format": graph_format, "channels_last": list(channels_last.get(gid, ())),
                    "shapes": shapes_record(signature(config, gid, graph_format))}
              for gid in export_graph_ids(config, graph_format)}
    linked = set(linked_ids(config)) <= graphs.keys()  # the plan links styled convs where the folder holds their graphs
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "exporter": exporter_record(),
        "config": dataclasses.asdict(config), "dtype": dtype, "opset": opset,
        "source": {"name": source.name, "fingerprint": source.fingerprint},
        "chain": chain_record(config), "style_channels": style_channels(config), "graphs": graphs,
        "noise": noise, "device": device, "mean_styles": mean,
        "runs": encode_runs(config, lambda first, last: run_plan(config, first, last, linked)),
        "endless": endless_record(config.size),
    }
    return write_manifest(folder, manifest)


def endless_record(size: int) -> dict:
    """The endless panorama's geometry for consumers outside Python (libsoat): spans ``span_width`` wide, span 0
    giving its columns ``first`` (``[lo, hi)``), every later span ``later`` (``tasks.panorama_geometry``)."""
    return {"span_width": 2 * size, "first": list(span_columns(size, 0)), "later": list(span_columns(size, 1))}


def write_manifest(folder: str, manifest: dict) -> str:
    """Write ``manifest.json`` last and atomically, so a folder with one is complete."""
    path = os.path.join(folder, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, path)
    return path


def write_noise(noise: Sequence[torch.Tensor], path: str) -> dict:
    """Fixed noise as fp32 ``noise_{i}`` arrays in an ``.npz`` (read back with ``allow_pickle=False``)."""
    arrays = {f"noise_{i}": n.detach().to("cpu", torch.float32).numpy() for i, n in enumerate(noise)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return {"file": os.path.basename(path), "sha256": file_sha256(path),
            "shapes": [list(a.shape) for a in arrays.values()]}


def write_mean_styles(weights: StyleGAN2Weights, fingerprint: str, path: str) -> dict:
    """sigma_bar exactly as ``Generator.mean_styles`` computes it on the torch backend (fp32, CPU), flat
    ``[1, total]``: affine(the checkpoint's ``w_avg``) where it has one, else affine(mean w over 50,000 z), kept
    in (and read from) the same cache entry that Generator uses; from the graph modules' own copies (the
    source's weights are not moved)."""
    config = weights.config
    affines = graph_module(weights, STYLES).to("cpu", torch.float32).eval()
    w_avg = getattr(weights, "w_avg", None)

    def sampled_mean() -> torch.Tensor:
        mapping = graph_module(weights, MAPPING).to("cpu", torch.float32).eval()
        return mean_w(mapping, mean_style_z(config.style_dim))

    with torch.no_grad():
        if w_avg is not None:
            centre = w_avg.detach().reshape(1, -1).to("cpu", torch.float32)
        else:
            key = mean_w_key(fingerprint, "torch", torch.float32, "cpu")
            centre = cached_mean_w(key, config.style_dim, sampled_mean).float()
        flat = affines(centre.unsqueeze(1).repeat(1, config.n_latent, 1)).numpy()
    with open(path, "wb") as f:
        np.savez(f, mean_styles=flat)
    return {"file": os.path.basename(path), "sha256": file_sha256(path), "shape": list(flat.shape)}


BUILDING, REPLACED = ".soat-building-", ".soat-replaced-"  # in the hidden names of an export's temporary folders


@contextlib.contextmanager
def atomic_folder(out_dir: str | os.PathLike) -> Iterator[str]:
    """Write an export folder atomically: yields a temporary sibling folder, renamed to ``out_dir`` when the
    block succeeds (and removed when it fails). An existing export (or empty folder) at ``out_dir`` is replaced
    as a whole, and only then: until the new folder is complete the old one stays. Any other non-empty folder is
    refused rather than deleted.

    Concurrent exports into one folder each build their own temporary folder; the swap happens under a lock on
    the parent folder, so they end with one complete export (the last), never a mix. The writer holds a lock on
    its temporary folder while it lives; the temporary folders of killed exports into this parent, which nobody
    holds, are removed (under the same parent lock, so a folder just made is never taken for debris). An
    ``OSError`` (a full disk, a read-only folder) is one ``SoatError`` line.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    parent, name = os.path.split(out_dir)
    with contextlib.ExitStack() as hold:
        try:
            os.makedirs(parent, exist_ok=True)
            with locked(parent):
                _check_replaceable(out_dir)
                remove_unheld(parent, _is_debris)
                tmp = tempfile.mkdtemp(prefix=f".{name}{BUILDING}", dir=parent)
                hold.enter_context(locked(tmp))
        except OSError as e:
            raise os_error(e, f"creating the export folder {out_dir!r}") from None
        try:
            yield tmp
            os.chmod(tmp, 0o755)
            with locked(parent):
                _check_replaceable(out_dir)  # again: something else may have been put there meanwhile
                old = None
                if os.path.lexists(out_dir):
                    old = tempfile.mkdtemp(prefix=f".{name}{REPLACED}", dir=parent)
                    os.replace(out_dir, os.path.join(old, "export"))
                os.replace(tmp, out_dir)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise os_error(e, f"writing the export {out_dir!r}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _check_replaceable(folder: str) -> None:
    if os.path.lexists(folder) and not (os.path.isdir(folder) and (
            not os.listdir(folder) or os.path.isfile(os.path.join(folder, MANIFEST)))):
        raise SoatError(f"{folder!r} exists and is not an export folder (no {MANIFEST}); choose another -o")


def _is_debris(name: str) -> bool:
    """A temporary folder of ``atomic_folder`` (a killed export's, when nobody holds it)."""
    return name.startswith(".") and (BUILDING in name or REPLACED in name)
