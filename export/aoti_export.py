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
sampling. The folder is written into a temporary sibling and renamed into place.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import SoatError
from ..runtime.chain import CONST, CONV_UP, build_chain
from ..runtime.checkpoint import file_sha256
from ..runtime.config import GeneratorConfig
from ..runtime.generator import MEAN_STYLE_SAMPLES, MEAN_STYLE_SEED
from ..runtime.graph_modules import ConstNode, graph_module
from ..runtime.graphs import MAPPING, STYLES, example_shapes, graph_ids, graph_io, linked_ids, linked_node_id
from ..runtime.manifest import (AOTI_DTYPES, AOTI_FORMAT, MEAN_STYLES_FILE, NOISE_FILE, build_manifest,
                                write_manifest)
from ..runtime.weights import StyleGAN2Weights
from .onnx_export import _resolve, _write_noise, atomic_folder, exporter_version

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
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
    weights, noise, name, fingerprint = _resolve(source, size, channel_multiplier)
    return export_aoti_weights(weights, noise, name, fingerprint, os.fspath(out_dir), dtype, device, progress,
                               workers)


def check_aoti_args(dtype: str, device: str, workers: int | None = None) -> None:
    if dtype not in AOTI_DTYPES:
        raise SoatError(f"dtype={dtype!r} cannot be exported as aoti; use one of {', '.join(AOTI_DTYPES)}")
    if device not in DEVICES:
        raise SoatError(f"device={device!r} is not an aoti export device; use 'cpu' or 'cuda'")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SoatError(f"workers={workers!r} must be an integer >= 1")
    if device == "cuda" and not torch.cuda.is_available():
        raise SoatError("--device cuda compiles CUDA kernels and needs a CUDA GPU at export; none is available")


def export_aoti_weights(weights: StyleGAN2Weights, fixed_noise: Sequence[torch.Tensor], source_name: str,
                        fingerprint: str, out_dir: str, dtype: str = "fp32", device: str = "cpu",
                        progress: bool = True, workers: int | None = None) -> str:
    """``export_aoti`` for weights already in hand."""
    check_aoti_args(dtype, device, workers)
    config = weights.config
    ids = graph_ids(config) + linked_ids(config)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    with atomic_folder(out_dir) as tmp:
        # modules cross to the workers on the CPU (plain pickles); each worker moves its own to the device
        modules = {gid: export_module(weights, gid, device).to("cpu", TORCH_DTYPES[dtype]).eval() for gid in ids}
        jobs = {gid: (module, config, gid, os.path.join(tmp, f"{gid}.pt2"), TORCH_DTYPES[dtype], device)
                for gid, module in modules.items()}
        bar = tqdm(total=len(ids), desc="export aoti", unit="graph", disable=not progress)
        if workers > 1:  # spawned processes: no forked CUDA or OpenMP state
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_quiet_worker) as pool:
                for future in as_completed([pool.submit(compile_graph, *job) for job in jobs.values()]):
                    bar.set_postfix_str(future.result()[1])
                    bar.update()
        else:
            for job in jobs.values():
                bar.set_postfix_str(compile_graph(*job)[1])
                bar.update()
        bar.close()
        graph_sha = {gid: file_sha256(job[3]) for gid, job in jobs.items()}
        noise_sha, noise_shapes = _write_noise(fixed_noise, os.path.join(tmp, NOISE_FILE))
        mean = {"file": MEAN_STYLES_FILE, **_write_mean_styles(weights, os.path.join(tmp, MEAN_STYLES_FILE))}
        exporter = {"soat": exporter_version(), "torch": torch.__version__}
        manifest = build_manifest(config, dtype, None, {"name": source_name, "fingerprint": fingerprint},
                                  graph_sha, noise_sha, noise_shapes, exporter, graph_format=AOTI_FORMAT,
                                  device=device, mean_styles=mean,
                                  channels_last={gid: channels_last_inputs(m) for gid, m in modules.items()})
        write_manifest(tmp, manifest)
    return os.path.join(out_dir, "manifest.json")


def export_module(weights: StyleGAN2Weights, graph_id: str, device: str) -> torch.nn.Module:
    """The module compiled for ``device``: the fused form on CUDA (module docstring), the plain one on the CPU."""
    if device == "cuda":
        from ..runtime.fused_graph_modules import fused_graph_module  # imports Triton
        return fused_graph_module(weights, graph_id)
    return graph_module(weights, graph_id)


def channels_last_inputs(module: torch.nn.Module) -> tuple[str, ...]:
    """The inputs a graph module is traced with, and reads, in channels_last (none for the plain forms)."""
    return tuple(getattr(module, "channels_last_inputs", ()))


def _quiet_worker() -> None:
    """A compile worker: torch's own deprecation notices (unpickling a module warns about LeafSpec) are noise
    in the export's progress bar."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


def dynamic_shapes(config: GeneratorConfig, graph_id: str) -> dict[str, dict[int, object]]:
    """``torch.export`` dynamic-shape specs of a graph's inputs (the module doc says which axes and why)."""
    Dim = torch.export.Dim
    batch = Dim("batch", min=1)
    if graph_id == MAPPING:
        return {"z": {0: batch}}
    if graph_id == STYLES:
        return {"wplus": {0: batch}}
    if (node_id := linked_node_id(graph_id)) is not None:
        spec = dynamic_shapes(config, node_id)
        spec["x_mod"] = spec.pop("x")
        return {**spec, "next_style": spec["style"]}  # the same Dim objects
    node = next(n for n in build_chain(config) if n.id == graph_id)
    if node.kind == CONST:
        return {"style": {0: batch}}
    if "skip" in node.inputs:
        sh, sw = Dim("skip_height", min=1), Dim("skip_width", min=1)
        return {"x": {0: batch, 2: 2 * sh, 3: 2 * sw}, "skip": {0: batch, 2: sh, 3: sw}, "style": {0: batch}}
    h, w = Dim("height", min=1), Dim("width", min=1)
    spec = {"x": {0: batch, 2: h, 3: w}, "style": {0: batch}}
    if "noise" in node.inputs:
        spec["noise"] = {0: batch, 2: 2 * h, 3: 2 * w} if node.kind == CONV_UP else {0: batch, 2: h, 3: w}
    return spec


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
            torch._inductor.aoti_compile_and_package(program, package_path=path,
                                                     inductor_configs=_INDUCTOR_CONFIGS.get(device))
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


def _write_mean_styles(weights: StyleGAN2Weights, path: str) -> dict:
    """sigma_bar exactly as ``Generator.mean_styles`` computes it on the torch backend (fp32, CPU), flat
    ``[1, total]``: affine(the checkpoint's ``w_avg``) where it has one, else affine(mean w over 50,000 z);
    from the graph modules' own copies (the source's weights are not moved)."""
    config = weights.config
    affines = graph_module(weights, STYLES).to("cpu", torch.float32).eval()
    w_avg = getattr(weights, "w_avg", None)
    with torch.no_grad():
        if w_avg is not None:
            mean_w = w_avg.detach().reshape(1, -1).to("cpu", torch.float32)
        else:
            mapping = graph_module(weights, MAPPING).to("cpu", torch.float32).eval()
            gen = torch.Generator().manual_seed(MEAN_STYLE_SEED)
            z = torch.randn(MEAN_STYLE_SAMPLES, config.style_dim, generator=gen)
            total = torch.zeros(1, config.style_dim, dtype=torch.float64)
            for chunk in torch.split(z, 4096):
                total += mapping(chunk).double().sum(0, keepdim=True)
            mean_w = (total / z.shape[0]).float()
        flat = affines(mean_w.unsqueeze(1).repeat(1, config.n_latent, 1)).numpy()
    with open(path, "wb") as f:
        np.savez(f, mean_styles=flat)
    return {"sha256": file_sha256(path), "shape": list(flat.shape)}
