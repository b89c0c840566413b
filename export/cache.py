"""The export cache: a checkpoint (or ``random[:SEED]``) exported once into
``<cache_dir>/exports/<key>`` (``$SOAT_CACHE_DIR``, default ``~/.cache/soat``), keyed by the
source's fingerprint, dtype, opset and exporter version, and reused while its manifest verifies.
``soat.load(CHECKPOINT, backend="onnxruntime")`` goes through here.

Concurrency: a cache folder is written once and never replaced while valid. Processes that
miss it take an exclusive lock (``fcntl.flock`` on ``<key>.lock``) and check again, so one
exports (into a ``.tmp-*`` folder, renamed into place) while the others wait and then use
its result. An exporter also holds a lock on its ``.tmp-*`` folder; a ``.tmp-*`` folder
that nobody holds and that is older than ``DEBRIS_AGE_S`` was left by a killed export and
is removed on the next use of the cache.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from ..errors import SoatError, os_error
from ..runtime.files import file_sha256
from ..runtime.filelock import locked as _locked, remove_unheld
from ..runtime.manifest import read_manifest
from ..runtime.sources import cache_subdir, load_weights
from .folder import Source
from .onnx_export import DEFAULT_OPSET, cache_key, export_source

TMP_PREFIX = ".tmp-"
DEBRIS_AGE_S = 600  # a .tmp-* folder nobody holds and untouched this long is a killed export's


def cached_export(source: str, dtype: str, size: int | None = None, channel_multiplier: int | None = None,
                  opset: int = DEFAULT_OPSET) -> str:
    """The cache folder holding ``source``'s export, made (atomically, by one process) when missing or invalid."""
    weights = None
    if os.path.isfile(source):
        fingerprint = file_sha256(source)  # load_checkpoint's fingerprint, without reading the weights
    else:
        weights, fingerprint = load_weights(source, size, channel_multiplier)
    root = cache_subdir("exports")
    folder = os.path.join(root, cache_key(fingerprint, dtype, opset))
    clean_debris(root)
    if _is_valid(folder):
        return folder
    with _locked(folder + ".lock", blocking=True):
        if _is_valid(folder):  # another process exported it while this one waited
            return folder
        if weights is None:
            weights, fingerprint = load_weights(source, size, channel_multiplier)
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root)
        try:
            with _locked(tmp, blocking=True):  # marks the folder as live for clean_debris
                export_source(Source(weights, weights.fixed_noise(), source, fingerprint), tmp, dtype, opset,
                              progress=sys.stderr.isatty())
                shutil.rmtree(folder, ignore_errors=True)  # an invalid leftover; valid folders are never replaced
                os.replace(tmp, folder)
        except OSError as e:  # a full disk
            raise os_error(e, f"exporting {source!r} into the export cache {root!r}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def clean_debris(root: str, max_age_s: float = DEBRIS_AGE_S) -> list[str]:
    """Remove ``.tmp-*`` folders under ``root`` that no live process holds and that are older than
    ``max_age_s``; returns their paths."""
    return remove_unheld(root, lambda name: name.startswith(TMP_PREFIX), max_age_s)


def _is_valid(folder: str) -> bool:
    try:
        read_manifest(folder)
    except SoatError:
        return False
    return True
