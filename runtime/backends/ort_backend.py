"""The ONNX Runtime backend: an export folder's graphs, one InferenceSession each.

Same contract as the torch backend: ``run(graph_id, {name: tensor}) -> {name: tensor}``
with the chain's tensor names. Sessions are created on first use and kept, each from the
graph file's bytes after checking them against the manifest's sha256. On CPU,
tensors cross as zero-copy numpy views. On CUDA, inputs and preallocated torch outputs
are bound by device pointer (IOBinding), and ONNX Runtime's stream is ordered against
torch's current stream on the GPU, so feature maps never visit the host and, without
graphs, the host never waits between nodes. With ``cuda_graphs`` (``soat.load``'s default) each
graph replays from ONNX Runtime's own CUDA graph per input signature (``ort_cuda_graphs.py``);
the first call of a new shape captures it, and ORT synchronizes its stream after each replay
(so the host waits per node there).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import SoatError
from ..backend import NodeByNode
from ..capabilities import backend_spec, precision
from ..graphs import graph_io, onnx_outputs, output_shape
from ..manifest import Manifest
from .ort_cuda_graphs import OrtCudaGraphs, weak_method


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise SoatError("backend='onnxruntime' needs ONNX Runtime: pip install onnxruntime "
                        "(onnxruntime-gpu for device='cuda')") from None
    return onnxruntime


class OrtBackend(NodeByNode):
    """Runs an export folder's graphs with ONNX Runtime (CPU or CUDA execution provider).

    Args:
        manifest: the verified export folder.
        device: ``cpu`` or ``cuda[:i]``.
        dtype: the export's dtype (fp32, or fp16 on CUDA).
        cuda_graphs: on CUDA, replay every graph from ONNX Runtime's CUDA graph capture (per input
            signature; ``soat.load`` passes its own ``cuda_graphs``, True by default); ``False`` runs
            every graph eagerly.
    """

    name = "onnxruntime"
    differentiable, capturable = backend_spec(name).differentiable, backend_spec(name).capturable

    def __init__(self, manifest: Manifest, device: torch.device, dtype: torch.dtype, cuda_graphs: bool = False):
        self.ort = import_onnxruntime()
        self.manifest = manifest
        self.config = manifest.config
        self.device = torch.device(device)
        self.dtype = dtype
        self._sessions: dict = {}
        self._run_options = None
        self._stream = None
        self._graphs = None
        if self.device.type == "cuda":
            if hasattr(self.ort, "preload_dlls"):
                self.ort.preload_dlls()  # CUDA/cuDNN from the torch wheels, where ORT finds none of its own
            if "CUDAExecutionProvider" not in self.ort.get_available_providers():
                raise SoatError("device='cuda' with backend='onnxruntime' needs onnxruntime-gpu (this ONNX Runtime "
                                f"has {self.ort.get_available_providers()}); pip install onnxruntime-gpu")
            # ORT runs on a stream ordered against torch's (see _run_cuda): no host sync after each graph
            self._stream = torch.cuda.Stream(self.device)
            self._run_options = self.ort.RunOptions()
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
            if cuda_graphs:
                self._graphs = OrtCudaGraphs(self.ort, self.config, weak_method(self._graph_session), self._stream,
                                             dtype)
        elif dtype != torch.float32:
            raise SoatError("ONNX Runtime on the CPU runs fp32 exports only; use dtype='fp32' or device='cuda'")

    def run(self, graph_id: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._check_graph(graph_id)
        if self._graphs is not None and self._graphs.capturable(graph_id):
            replayed = self._graphs.run(graph_id, inputs)
            if replayed is not None:
                return replayed
        session = self._session(graph_id)
        names, outputs = graph_io(self.config, graph_id)
        if self.device.type == "cuda":
            return self._run_cuda(session, graph_id, {n: inputs[n] for n in names})
        feeds = {n: inputs[n].detach().to(self.device, self.dtype).contiguous().numpy() for n in names}
        results = session.run(list(onnx_outputs(self.config, graph_id)), feeds)
        return {name: torch.from_numpy(r) for name, r in zip(outputs, results)}

    def _run_cuda(self, session, graph_id: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """IOBinding: inputs and a preallocated torch output, all by device pointer.

        ORT runs on the backend's own stream (a null stream cannot be handed to ORT, and
        torch's default stream is null); the stream waits for torch's current stream
        before the graph, and the current stream waits for it after: ordering on the
        GPU, no host sync. Input copies made here are freed after that second wait, so
        their memory is reused only by work ordered after the graph.
        """
        idx = self.device.index or 0
        elem = precision(self.dtype).numpy_dtype
        tensors = {n: t.detach().to(self.device, self.dtype).contiguous() for n, t in inputs.items()}
        shape = output_shape(self.config, graph_id, {n: t.shape for n, t in tensors.items()})
        out = torch.empty(shape, device=self.device, dtype=self.dtype)
        binding = session.io_binding()
        for name, t in tensors.items():
            binding.bind_input(name, "cuda", idx, elem, tuple(t.shape), t.data_ptr())
        binding.bind_output(onnx_outputs(self.config, graph_id)[0], "cuda", idx, elem, shape, out.data_ptr())
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        session.run_with_iobinding(binding, self._run_options)
        current.wait_stream(self._stream)
        return {graph_io(self.config, graph_id)[1][0]: out}

    def _check_graph(self, graph_id: str) -> None:
        if graph_id not in self.manifest.graphs:
            raise SoatError(f"graph {graph_id!r} is not in export {self.manifest.folder!r}")

    def _session(self, graph_id: str):
        if graph_id not in self._sessions:
            self._sessions[graph_id] = self.ort.InferenceSession(self._verified_bytes(graph_id),
                                                                 providers=self._providers())
        return self._sessions[graph_id]

    def _graph_session(self, graph_id: str):
        """A session of ``graph_id`` that captures CUDA graphs (one per ``gpu_graph_id``)."""
        return self.ort.InferenceSession(self._verified_bytes(graph_id), providers=self._providers(cuda_graph=True))

    def _verified_bytes(self, graph_id: str) -> bytes:
        """The graph file's bytes, checked against the manifest's sha256: the session is built from exactly
        the bytes that were hashed, so a folder re-exported after it was checked cannot mix in another model."""
        data = self.manifest.graph_bytes(graph_id)
        _check_finite_initializers(data, f"graph {graph_id!r} of export {self.manifest.folder!r}")
        return data

    def _providers(self, cuda_graph: bool = False) -> list:
        if self.device.type != "cuda":
            return ["CPUExecutionProvider"]
        options = {"device_id": self.device.index or 0, "user_compute_stream": str(self._stream.cuda_stream),
                   "use_tf32": "0" if self.dtype == torch.float32 else "1"}  # TF32 would cost ~1e-3 in fp32
        if cuda_graph:
            options["enable_cuda_graph"] = "1"
        return [("CUDAExecutionProvider", options)]


def _check_finite_initializers(data: bytes, where: str) -> None:
    """Refuse a graph whose weights hold NaN or inf (they make every image NaN), naming the tensor."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:  # onnxruntime without the onnx package: nothing to parse the weights with
        return
    try:
        model = onnx.load_from_string(data)
    except Exception:  # not an ONNX protobuf: ONNX Runtime reports that in its own words
        return
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise SoatError(f"{where}: weight {init.name!r} holds NaN or inf values; the export is corrupt or was "
                            "made from a corrupt checkpoint. Export a good checkpoint again")
