"""The AOTInductor backend: an export folder of ``.pt2`` packages (``soat export --format aoti``).

Each graph is a package compiled ahead of time by ``torch._inductor`` (C++ kernels on the
CPU, Triton on CUDA) and loaded on first use by libtorch's package loader
(``torch._C._aoti.AOTIModelPackageLoader``, the class ``torch._inductor.aoti_load_package`` wraps and
``libsoat`` uses in C++). Calling the loader directly skips the wrapper's pytree work on every call: the
graphs take and return flat tensors.
A package runs only under the torch version that built it and on the device type it was
compiled for: both are in the manifest and checked here before anything is loaded.
The noise input takes the batch of ``x`` (see ``soat.export.aoti_export``): a
``[1, 1, H, W]`` map is expanded to ``[B, 1, H, W]`` before the call. Inputs are passed dense in the
memory format the manifest lists for them (channels_last for the feature maps of CUDA exports, else
contiguous): a package reads its inputs with the strides it was compiled for, and gives wrong
numbers, without an error, for any other.

A run of layers follows the manifest's run plan (``Manifest.run_plan``): in a folder with linked graphs
the styled convs go through them wherever that saves the modulation pass between them, the run's first
linked graph getting its input modulated by one ATen multiply and each handing the next its modulated
input. A package is loaded from the bytes checked against the manifest's sha256 (``_model``), so a
folder replaced after ``soat.load`` gives an error, never a mix of two models.

A package is trusted only as far as the manifest vouches for it: besides its sha256, its metadata must name the
graph it stands for (packages of older exports, which name none, must take that graph's number of inputs), and
anything libtorch's loader refuses, or the package raises when run, is one ``SoatError`` naming the graph and
the file.

The packages run single-threaded (no per-run CUDA event, so that a whole task can be captured into
one CUDA graph), so the backend serializes its calls and package loads with a lock: a package's
model instance is not safe to run from two threads at once.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import sys
import tempfile
import threading
from typing import Sequence

import torch

from ...errors import SoatError
from ...triton_kernels.modulate import modulate_ref
from ..backend import NodeByNode, execute_plan
from ..capabilities import backend_spec
from ..chain import Step
from ..graphs import PlanStep, chain_index, graph_io
from ..manifest import GRAPH_ID_KEY, Manifest, graph_where


@functools.cache
def expose_cxx_runtime() -> None:
    """Make libstdc++ and libtorch_cpu global (``RTLD_GLOBAL``) before the first package loads, as they are in
    a C++ program linked against libtorch.

    A package's ``wrapper.so`` carries its own copies of the C++ templates it uses (``std::regex``, in the
    device-string parsing every package runs when it loads); in a C++ program libtorch's copies, found first in
    the global scope, replace them. In a Python process nothing of libtorch's is global, and on the lent GPU
    machines every package load died inside ``std::regex`` (SIGSEGV, bench/NOTES.md round 4) while the same
    packages loaded in C++. With both libraries promoted every package loads and runs in Python there (round 5;
    which of the two is needed was not isolated). Already loaded libraries are only promoted (``RTLD_NOLOAD``);
    a name that is not loaded is skipped.
    """
    if not sys.platform.startswith("linux"):
        return
    for name in ("libstdc++.so.6", os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")):
        try:
            ctypes.CDLL(name, mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD)
        except OSError:
            pass


def check_aoti_source(source: str) -> None:
    """The aoti backend loads export folders only (a checkpoint is not compiled on the fly)."""
    if not os.path.isdir(source):
        raise SoatError(f"backend='aoti' loads an export folder; {source!r} is not one. Compile one with "
                        f"`soat export --checkpoint {source} -o DIR --format aoti`")


def check_package_compatibility(manifest: Manifest, device: torch.device) -> None:
    """Refuse packages built by another torch version or for another device type."""
    built = manifest.exporter.get("torch")
    if built != torch.__version__:
        raise SoatError(f"export {manifest.folder!r} was compiled by torch {built}, but this is torch "
                        f"{torch.__version__}; AOTI packages load only in the torch that built them: "
                        "re-export the folder with this torch")
    if manifest.device != device.type:
        raise SoatError(f"export {manifest.folder!r} was compiled for device {manifest.device!r} but "
                        f"device={device.type!r} was asked for; load it with device={manifest.device!r} or "
                        f"re-export with --device {device.type}")


class AotiBackend(NodeByNode):
    """Runs an export folder's AOTInductor packages (one per graph).

    Args:
        manifest: the verified export folder (graph format ``aoti``).
        device: the device the packages were compiled for (``cpu`` or ``cuda[:i]``).
        dtype: the export's dtype.
    """

    name = "aoti"
    differentiable, capturable = backend_spec(name).differentiable, backend_spec(name).capturable

    def __init__(self, manifest: Manifest, device: torch.device, dtype: torch.dtype):
        self.device = torch.device(device)
        check_package_compatibility(manifest, self.device)
        self.manifest = manifest
        self.config = manifest.config
        self.dtype = dtype
        self._models: dict = {}
        self._lock = threading.Lock()

    def run_chain(self, steps: Sequence[Step], x: torch.Tensor,
                  rgb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Consecutive nodes ``(node, style, noise)`` as the manifest's run plan says: styled convs through their
        linked graphs where it links them, the other nodes' graphs as they are."""
        if not steps:
            return x, rgb
        first = chain_index(self.config, steps[0][0].id)
        return execute_plan(self.manifest.run_plan(first, first + len(steps)), steps, x, rgb, self.run_node,
                            self._run_linked, modulate_ref)  # one ATen multiply before a run's first linked graph

    def _run_linked(self, step: PlanStep, x_mod: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None,
                    next_style: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        inputs = {"x_mod": x_mod, "style": style, "noise": noise}
        if "next_style" in graph_io(self.config, step.graph)[0]:  # its own style where that output goes unread
            inputs["next_style"] = style if next_style is None else next_style
        out = self.run(step.graph, inputs)
        return (out["x"] if "x" in step.writes else None,
                out["next_x_mod"] if "next_x_mod" in step.writes else None)

    def run(self, graph_id: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names, outputs = graph_io(self.config, graph_id)
        args = [inputs[n].detach().to(self.device, self.dtype) for n in names]
        if "noise" in names:
            i = names.index("noise")
            args[i] = args[i].expand(args[0].shape[0], *args[i].shape[1:])
        channels_last = self.manifest.channels_last(graph_id)
        args = [a.contiguous(memory_format=torch.channels_last if n in channels_last else torch.contiguous_format)
                for n, a in zip(names, args)]
        with self._lock:  # the package and, on first use, its load
            model = self._model(graph_id)
            try:
                out = model.run(args)
            except RuntimeError as e:
                raise SoatError(f"{graph_where(self.manifest, graph_id)}: the package failed to run "
                                f"({_first_line(e)}); re-export the folder") from None
        return dict(zip(outputs, out))

    def _model(self, graph_id: str):
        """The graph's loaded package: its bytes verified against the manifest, written into this backend's
        private folder and loaded from there, so the package that runs is the one that was checked whatever
        happens to the export folder afterwards."""
        model = self._models.get(graph_id)
        if model is None:
            data = self.manifest.graph_bytes(graph_id)
            expose_cxx_runtime()
            index = self.device.index if self.device.index is not None else -1
            with tempfile.TemporaryDirectory(prefix="soat-aoti-") as private:
                path = os.path.join(private, os.path.basename(self.manifest.graph_path(graph_id)))
                with open(path, "wb") as f:
                    f.write(data)
                try:
                    # (path, model name in the package, run single-threaded, runners, device index)
                    model = torch._C._aoti.AOTIModelPackageLoader(path, "model", True, 1, index)
                except RuntimeError as e:
                    raise SoatError(f"{graph_where(self.manifest, graph_id)} is not a package this torch can load "
                                    f"({_first_line(e)}); re-export the folder") from None
            self._models[graph_id] = _checked(model, self.manifest, graph_id)
        return model


def _checked(model, manifest: Manifest, graph_id: str):
    """A loaded package once it is the graph the manifest lists: its metadata names that graph (packages of
    exports made before the name was written: it takes that graph's number of inputs)."""
    named = model.get_metadata().get(GRAPH_ID_KEY)
    if named is not None and named != graph_id:
        raise SoatError(f"{graph_where(manifest, graph_id)}: the package holds graph {named!r}; re-export the folder")
    expected = len(graph_io(manifest.config, graph_id)[0])
    try:  # the call spec: a pytree of ((inputs...), {}) in torch.utils._pytree's JSON
        count = len(json.loads(model.get_call_spec()[0])[1]["children_spec"][0]["children_spec"])
    except (ValueError, LookupError, TypeError, RuntimeError):
        count = None
    if count is not None and count != expected:
        raise SoatError(f"{graph_where(manifest, graph_id)}: the package takes {count} inputs, the graph "
                        f"{expected}; re-export the folder")
    return model


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
