"""``soat export ... --format aoti``: one AOTInductor package (``.pt2``) per graph.

Each graph is the module of ``runtime/graph_modules.py`` that the ONNX exporter traces,
captured by ``torch.export`` with dynamic shapes and compiled ahead of time by
``torch._inductor.aoti_compile_and_package``: on the CPU the plain form (C++ kernels); on CUDA
the fused form of ``runtime/fused_graph_modules.py``, whose styled convs and ToRGBs call the fast
path's Triton kernels (Inductor compiles them into the package) around cuDNN's convs, with the
feature map ``x`` read in channels_last (recorded per graph in the manifest; the loaders pass it so).
Besides the graphs of the chain, every styled conv gets its linked graph (``graphs.linked_ids``): the
loaders run consecutive styled convs through those, with no modulation pass between them.
The packages load in Python (``soat.load(DIR, backend="aoti")``) and in C++
(``torch::inductor::AOTIModelPackageLoader``; ``cpp/``, ``libsoat``), with the same
libtorch version only: the manifest records the torch version and the device, and both
loaders refuse a package built by another torch or for another device.

Dynamic axes (``torch.export.Dim``; every graph is dynamic, none had to be static):

- batch ``B >= 1`` on every input; the noise takes the batch of ``x`` (``[B, 1, H', W']``:
  the loaders expand a ``[1, 1, H', W']`` noise map, one channel, before the call), since a
  size-1-or-B axis cannot be expressed as one symbol in ``torch.export``;
- height and width ``>= 1`` of every feature map, with the relations the layers imply:
  an upsampling conv's noise is ``2H x 2W``; a block ToRGB's ``x`` is twice its ``skip``
  (``H = 2 Hs``), so odd heights at a ToRGB are refused (no task makes them);
- the constant: batch only; mapping and styles: batch only;
- a linked graph: as its node's, ``x_mod`` in place of ``x`` and ``next_style`` at the batch.

Besides the packages the folder holds the fixed noise (``noise.npz``, as the ONNX
export) and the mean styles (``mean_styles.npz``: sigma_bar, flat ``[1, total]`` fp32,
computed at export exactly as ``Generator.mean_styles``), so truncation at load needs no
sampling. The folder is written into a temporary sibling and renamed into place (``folder.atomic_folder``).

Every graph compiles in a spawned worker process (even with ``workers=1``): libtorch's package writer aborts
the whole process when a write fails (a full disk), which then costs a worker and gives one error line, its
output kept in a log and only its last words shown. The workers die with the exporting process (Linux's parent
death signal, and a watch on the parent elsewhere) and are killed when the export stops early, so none goes on
compiling into a folder nobody will use.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import resource_tracker
from typing import Sequence

import torch
from tqdm import tqdm

from ..errors import SoatError
from ..runtime.files import file_sha256
from ..runtime.config import GeneratorConfig
from ..runtime.graph_modules import ConstNode, graph_module
from ..runtime.capabilities import AOTI_FORMAT, export_precisions, precision
from ..runtime.graphs import example_shapes, graph_io, signature
from ..runtime.manifest import GRAPH_ID_KEY, export_graph_ids
from ..runtime.weights import StyleGAN2Weights
from .folder import Source, atomic_folder, finish_folder, resolve_source

DEVICES = ("cpu", "cuda")
# On the CPU the C++ wrapper (calls into the kernels and ATen) is compiled at -O0: half the compile time of a
# graph (~17 s instead of ~33 s on 2 cores), the kernels themselves keep inductor's -O3.
_INDUCTOR_CONFIGS = {"cpu": {"aot_inductor.compile_wrapper_opt_level": "O0"}}


def export_aoti(source, out_dir: str | os.PathLike, dtype: str = "fp32", device: str = "cpu",
                progress: bool = True, size: int | None = None, channel_multiplier: int | None = None,
                workers: int | None = None) -> str:
    """Export a generator to ``out_dir`` as AOTInductor packages (``<graph id>.pt2``), ``noise.npz``,
    ``mean_styles.npz`` and ``manifest.json``.

    Args:
        source: a checkpoint path, ``"random[:SEED]"``, or a ``Generator`` on the torch or fast backend.
        out_dir: the export folder; an existing export there is replaced as a whole.
        dtype: ``fp32``, ``fp16`` or ``bf16`` (weights and every graph input/output).
        device: ``cpu`` (C++ kernels) or ``cuda`` (Triton kernels; needs a GPU at export).
        progress: show a progress bar over the graphs.
        size, channel_multiplier: layout of a ``random`` source.
        workers: graphs compiled at once, each in its own process (default: up to 4; one compile is mostly a
            single-threaded g++ and, on CUDA, Triton's compiler).
    Returns:
        The path of ``manifest.json``.
    """
    check_aoti_args(dtype, device, workers)
    return export_aoti_source(resolve_source(source, size, channel_multiplier), os.fspath(out_dir), dtype, device,
                              progress, workers)


def check_aoti_args(dtype: str, device: str, workers: int | None = None) -> None:
    if dtype not in export_precisions(AOTI_FORMAT):
        raise SoatError(f"dtype={dtype!r} cannot be exported as aoti; use one of "
                        f"{', '.join(export_precisions(AOTI_FORMAT))}")
    if device not in DEVICES:
        raise SoatError(f"device={device!r} is not an aoti export device; use 'cpu' or 'cuda'")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SoatError(f"workers={workers!r} must be an integer >= 1")
    if device == "cuda" and not torch.cuda.is_available():
        raise SoatError("--device cuda compiles CUDA kernels and needs a CUDA GPU at export; none is available")


def export_aoti_source(source: Source, out_dir: str, dtype: str = "fp32", device: str = "cpu",
                       progress: bool = True, workers: int | None = None) -> str:
    """``export_aoti`` for a resolved source."""
    check_aoti_args(dtype, device, workers)
    weights, config = source.weights, source.weights.config
    ids = export_graph_ids(config, AOTI_FORMAT)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    with atomic_folder(out_dir) as tmp:
        # modules cross to the workers on the CPU (plain pickles); each worker moves its own to the device
        torch_dtype = precision(dtype).torch_dtype
        modules = {gid: export_module(weights, gid, device).to("cpu", torch_dtype).eval() for gid in ids}
        jobs = {gid: (module, config, gid, os.path.join(tmp, f"{gid}.pt2"), torch_dtype, device)
                for gid, module in modules.items()}
        with tqdm(total=len(ids), desc="export aoti", unit="graph", disable=not progress) as bar:
            _compile_all(jobs, workers, bar)
        graph_sha = {gid: file_sha256(job[3]) for gid, job in jobs.items()}
        finish_folder(tmp, source, AOTI_FORMAT, dtype, None, device, graph_sha,
                      {gid: channels_last_inputs(m) for gid, m in modules.items()})
    return os.path.join(os.path.abspath(out_dir), "manifest.json")


def export_module(weights: StyleGAN2Weights, graph_id: str, device: str) -> torch.nn.Module:
    """The module compiled for ``device``: the fused form on CUDA (module docstring), the plain one on the CPU."""
    if device == "cuda":
        from ..runtime.fused_graph_modules import fused_graph_module  # imports Triton
        return fused_graph_module(weights, graph_id)
    return graph_module(weights, graph_id)


def channels_last_inputs(module: torch.nn.Module) -> tuple[str, ...]:
    """The inputs a graph module is traced with, and reads, in channels_last (none for the plain forms)."""
    return tuple(getattr(module, "channels_last_inputs", ()))


def compile_pool(workers: int, log: str | None = None) -> ProcessPoolExecutor:
    """``workers`` spawned processes (no forked CUDA or OpenMP state) that die with this one; their standard
    error goes to ``log`` (appended) when given."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(os.getpid(), log))


def _compile_all(jobs: dict[str, tuple], workers: int, bar: tqdm) -> None:
    """Compile every job (``compile_graph``'s arguments) in ``compile_pool``; a worker that dies is one
    ``SoatError``, and the workers are killed when this stops early (an error, Ctrl-C, ``SystemExit``)."""
    fd, log = tempfile.mkstemp(prefix="soat-aoti-", suffix=".log")
    os.close(fd)
    pool = compile_pool(workers, log)
    try:
        for future in as_completed([pool.submit(compile_graph, *job) for job in jobs.values()]):
            bar.set_postfix_str(future.result()[1])
            bar.update()
    except BrokenProcessPool:
        raise SoatError(f"aoti export: a compile worker died ({_last_words(log)}){_disk_note(jobs, True)}") from None
    except SoatError as e:  # a graph that did not compile (a full disk shows here too)
        _kill(pool)
        raise SoatError(f"{e}{_disk_note(jobs, False)}") from None
    except BaseException:
        _kill(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        os.remove(log)


def _kill(pool: ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public way before 3.14
        process.kill()


def _disk_note(jobs: dict[str, tuple], always: bool) -> str:
    """The free space where the packages go, when ``always`` or when it is low (under 256 MiB)."""
    folder = os.path.dirname(os.path.dirname(next(iter(jobs.values()))[3]))
    free = shutil.disk_usage(folder).free
    if not always and free >= 256 << 20:
        return ""
    return (f"; {free / 2 ** 20:,.0f} MiB are free on the disk of {folder!r}: if it is full, free some space and "
            "run again")


def _last_words(log: str) -> str:
    """What a dead worker said last: the ``what():`` of a C++ exception, else its last line."""
    try:
        with open(log, errors="replace") as f:
            lines = [line.strip() for line in f.read()[-20000:].splitlines() if line.strip()]
    except OSError:
        lines = []
    what = [line.split("what():", 1)[1].strip() for line in lines if "what():" in line]
    return (what or lines or ["it left no message"])[-1][:300]


def _worker_init(parent: int, log: str | None) -> None:
    """A compile worker: it dies with ``parent``, writes its standard error into ``log``, and leaves out torch's
    deprecation notices (unpickling a module warns about LeafSpec)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed when the parent dies
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 2)
        os.close(fd)
        # its own resource tracker (the parent's by default), so that the notices of a killed worker's semaphores
        # go to the log too, not to the terminal after the one error line
        tracker = resource_tracker._resource_tracker
        if getattr(tracker, "_fd", None) is not None:
            os.close(tracker._fd)
            tracker._fd = tracker._pid = None
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def dynamic_shapes(config: GeneratorConfig, graph_id: str) -> dict[str, dict[int, object]]:
    """``torch.export`` dynamic-shape specs of a graph's inputs, from its signature (``graphs.signature``: which
    axes vary and how they relate): one ``Dim`` per symbol, ``2*height`` as ``2 * Dim("height")``."""
    dims: dict[str, object] = {}

    def dim(expr: str):
        factor, _, name = expr.rpartition("*")
        symbol = dims.setdefault(name, torch.export.Dim(name, min=1))
        return int(factor) * symbol if factor else symbol

    inputs, _ = signature(config, graph_id, AOTI_FORMAT)
    return {name: {i: dim(d) for i, d in enumerate(shape) if isinstance(d, str)} for name, shape in inputs.items()}


def example_inputs(config: GeneratorConfig, graph_id: str, dtype: torch.dtype, device: str,
                   channels_last: Sequence[str] = ()) -> tuple:
    """Tracing inputs (``graphs.example_shapes``: batch 2, a 4 x 8 map), the noise at the batch of ``x``, the
    ``channels_last`` ones in that memory format."""
    shapes = dict(example_shapes(config, graph_id))
    if "noise" in shapes:
        shapes["noise"] = (shapes["style"][0], *shapes["noise"][1:])
    gen = torch.Generator().manual_seed(0)
    names = graph_io(config, graph_id)[0]
    args = (torch.randn(shapes[n], generator=gen).to(device, dtype) for n in names)
    return tuple(a.contiguous(memory_format=torch.channels_last) if n in channels_last else a
                 for n, a in zip(names, args))


def compile_graph(module: torch.nn.Module, config: GeneratorConfig, graph_id: str, path: str,
                  dtype: torch.dtype, device: str) -> tuple[str, str]:
    """``torch.export`` one graph module with its dynamic shapes and compile it into the package ``path``;
    returns ``(path, graph_id)``."""
    module = module.to(device)
    args = example_inputs(config, graph_id, dtype, device, channels_last_inputs(module))
    names = graph_io(config, graph_id)[0]
    specs = dynamic_shapes(config, graph_id)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            module = _Constant(module) if isinstance(module, ConstNode) else module
            program = torch.export.export(module, args, dynamic_shapes=tuple(specs.get(n) for n in names))
            configs = {**_INDUCTOR_CONFIGS.get(device, {}), "aot_inductor.metadata": {GRAPH_ID_KEY: graph_id}}
            torch._inductor.aoti_compile_and_package(program, package_path=path, inductor_configs=configs)
            return path, graph_id
    except Exception as e:  # torch.export / inductor raise many types; one line says which graph
        raise SoatError(f"aoti export of graph {graph_id!r} failed: {type(e).__name__}: {str(e).splitlines()[0]}") \
            from e


class _Constant(torch.nn.Module):
    """``ConstNode`` with its buffer renamed: inductor's C++ wrapper names a constant after its attribute, and
    ``const`` is a C++ keyword (the package would not compile)."""

    def __init__(self, node: ConstNode):
        super().__init__()
        self.register_buffer("constant_input", node.const)
        self.shape = node.shape

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        return self.constant_input.expand(style.shape[0], *self.shape)
