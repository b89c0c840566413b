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

In a folder with linked graphs (format 4) a run of layers goes through them wherever that saves the
modulation pass between styled convs (``run_chain``): the run's first styled conv gets its input
modulated by one ATen multiply, and every linked graph hands the next one its modulated input.

The packages run single-threaded (no per-run CUDA event, so that a whole task can be captured into
one CUDA graph), so the backend serializes its calls and package loads with a lock: a package's
model instance is not safe to run from two threads at once.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from typing import Sequence

import torch

from ...errors import SoatError
from ..backend import NodeByNode
from ..chain import TO_RGB, Step, advance
from ..graphs import following_conv, graph_io, linked_id
from ..manifest import Manifest

# torch dtype -> the manifest's dtype name (soat.load's export dtypes for this backend)
AOTI_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


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
    differentiable = False
    capturable = True

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
        """Consecutive nodes ``(node, style, noise)``; styled convs through their linked graphs where the folder
        has them and the run chains them (``_links``), the other nodes' graphs as they are."""
        if not self.manifest.linked:
            return super().run_chain(steps, x, rgb)
        x_mod = None  # the next styled conv's modulated input, once a linked graph gave it
        for k, (node, style, noise) in enumerate(steps):
            if node.styled_conv and self._links(steps, k, x_mod is not None):
                following = following_conv(self.config, node.id)
                if x_mod is None:
                    x_mod = x * style[:, :, None, None]
                inputs = {"x_mod": x_mod, "style": style, "noise": noise}
                if following is not None:  # its own style where the run ends first: that output goes unread
                    inputs["next_style"] = next((s for n, s, _ in steps[k + 1:] if n == following), style)
                out = self.run(linked_id(node.id), inputs)
                x, x_mod = out.get("x"), out.get("next_x_mod")
            else:
                x, rgb = advance(node, self.run_node(node, x, style, noise, rgb), x, rgb)
                if node.kind != TO_RGB:  # a ToRGB leaves the features, and so their modulated form, as they are
                    x_mod = None
        return x, rgb

    def _links(self, steps: Sequence[Step], k: int, modulated: bool) -> bool:
        """Whether the styled conv ``steps[k]`` runs its linked graph: where its input is already modulated or
        the run goes on to the next styled conv, unless the run reads an ``x`` that graph does not give (an
        upsampling conv that ends the run; its input ``x`` is then at hand)."""
        node = steps[k][0]
        reads_x = k == len(steps) - 1 or steps[k + 1][0].kind == TO_RGB
        if reads_x and "x" not in graph_io(self.config, linked_id(node.id))[1]:
            return False
        following = following_conv(self.config, node.id)
        return modulated or any(n == following for n, _, _ in steps[k + 1:])

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
            out = self._model(graph_id).run(args)
        return dict(zip(outputs, out))

    def _model(self, graph_id: str):
        model = self._models.get(graph_id)
        if model is None:
            if graph_id not in self.manifest.graphs:
                raise SoatError(f"graph {graph_id!r} is not in export {self.manifest.folder!r}")
            expose_cxx_runtime()
            index = self.device.index if self.device.index is not None else -1
            # (path, model name in the package, run single-threaded, runners, device index)
            model = torch._C._aoti.AOTIModelPackageLoader(self.manifest.graph_path(graph_id), "model", True, 1,
                                                          index)
            self._models[graph_id] = model
        return model
