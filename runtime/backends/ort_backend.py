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

A graph file is trusted only as far as the manifest vouches for it: besides its sha256, its weights must be
inside the file and finite, its inputs and outputs those of the graph it stands for (and its metadata name that
graph, where it names one); anything ONNX Runtime refuses when loading or running it is one ``SoatError``
naming the graph and the file.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

from ...errors import SoatError
from ..backend import NodeByNode
from ..capabilities import ONNX_FORMAT, backend_spec, precision
from ..graphs import graph_io, onnx_outputs, output_shape, signature
from ..manifest import GRAPH_ID_KEY, Manifest, graph_where
from .ort_cuda_graphs import OrtCudaGraphs, weak_method


# CUDA execution provider options beyond the device, stream, TF32 and graph settings, as ONNX Runtime spells them
# (prefer_nhwc, cudnn_conv_algo_search, ...): none, ORT's defaults, which round 11 found no option to beat on the
# H100 (bench/NOTES.md). SOAT_ORT_CUDA_OPTIONS ("key=value,key=value") replaces them, to time others.
CUDA_EP_OPTIONS: dict[str, str] = {}
CUDA_EP_OPTIONS_ENV = "SOAT_ORT_CUDA_OPTIONS"


def cuda_ep_options() -> dict[str, str]:
    """``CUDA_EP_OPTIONS``, or the pairs in ``SOAT_ORT_CUDA_OPTIONS`` (read when a session is made)."""
    value = os.environ.get(CUDA_EP_OPTIONS_ENV)
    if value is None:
        return dict(CUDA_EP_OPTIONS)
    options = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        key, equals, option = (part.strip() for part in pair.partition("="))
        if not (key and equals and option) or "=" in option:
            raise SoatError(f"{CUDA_EP_OPTIONS_ENV}={value!r} must be ONNX Runtime CUDA provider options as "
                            "key=value pairs joined by commas (e.g. prefer_nhwc=1,cudnn_conv_algo_search=HEURISTIC)")
        options[key] = option
    return options


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
        try:
            results = session.run(list(onnx_outputs(self.config, graph_id)), feeds)
        except Exception as e:  # ONNX Runtime's own exception types
            raise self._refused(graph_id, "ONNX Runtime failed to run it", e) from None
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
        try:
            session.run_with_iobinding(binding, self._run_options)
        except Exception as e:  # ONNX Runtime's own exception types
            raise self._refused(graph_id, "ONNX Runtime failed to run it", e) from None
        current.wait_stream(self._stream)
        return {graph_io(self.config, graph_id)[1][0]: out}

    def _check_graph(self, graph_id: str) -> None:
        if graph_id not in self.manifest.graphs:
            raise SoatError(f"graph {graph_id!r} is not in export {self.manifest.folder!r}")

    def _session(self, graph_id: str):
        if graph_id not in self._sessions:
            data = self._verified_bytes(graph_id)
            try:
                session = self.ort.InferenceSession(data, self._options(), providers=self._providers())
            except Exception as e:  # ONNX Runtime's own exception types: a file that is not a loadable graph
                raise self._refused(graph_id, "ONNX Runtime cannot load it", e) from None
            self._sessions[graph_id] = self._checked(session, graph_id)
        return self._sessions[graph_id]

    def _graph_session(self, graph_id: str):
        """A session of ``graph_id`` that captures CUDA graphs (one per ``gpu_graph_id``). ONNX Runtime's errors
        stay its own: ``OrtCudaGraphs`` takes them for a graph it cannot capture, which then runs in
        ``_session``."""
        session = self.ort.InferenceSession(self._verified_bytes(graph_id), self._options(),
                                            providers=self._providers(cuda_graph=True))
        return self._checked(session, graph_id)

    def _verified_bytes(self, graph_id: str) -> bytes:
        """The graph file's bytes, checked against the manifest's sha256: the session is built from exactly
        the bytes that were hashed, so a folder re-exported after it was checked cannot mix in another model."""
        data = self.manifest.graph_bytes(graph_id)
        _check_weights(data, self._where(graph_id))
        return data

    def _checked(self, session, graph_id: str):
        """``session`` once its graph is the one the manifest lists: its metadata's graph id (where it has one),
        its input and output names and the fixed sizes of its inputs (the manifest's shapes)."""
        named = session.get_modelmeta().custom_metadata_map.get(GRAPH_ID_KEY)
        if named is not None and named != graph_id:
            raise SoatError(f"{self._where(graph_id)}: the file holds graph {named!r}; re-export the folder")
        inputs, _ = signature(self.config, graph_id, ONNX_FORMAT)
        found = {i.name: list(i.shape) for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        fits = list(found) == list(inputs) and outputs == list(onnx_outputs(self.config, graph_id)) and all(
            len(found[n]) == len(dims) and all(f == d for f, d in zip(found[n], dims) if isinstance(d, int))
            for n, dims in inputs.items())
        if not fits:
            raise SoatError(f"{self._where(graph_id)}: the file's inputs {found} and outputs {outputs} are not the "
                            f"graph's ({dict(inputs)}, {list(onnx_outputs(self.config, graph_id))}); re-export the "
                            "folder")
        return session

    def _options(self):
        options = self.ort.SessionOptions()
        options.log_severity_level = 4  # errors come back as exceptions (and become one line), not as log lines
        return options

    def _where(self, graph_id: str) -> str:
        return graph_where(self.manifest, graph_id)

    def _refused(self, graph_id: str, what: str, e: Exception) -> SoatError:
        reason = _ORT_CODE.sub(r"\1: ", _ORT_SOURCE.sub("", " ".join(str(e).split())))[:300] or type(e).__name__
        return SoatError(f"{self._where(graph_id)}: {what} ({reason}); the file is not a graph soat exported. "
                         "Re-export the folder")

    def _providers(self, cuda_graph: bool = False) -> list:
        if self.device.type != "cuda":
            return ["CPUExecutionProvider"]
        options = {**cuda_ep_options(), "device_id": self.device.index or 0,
                   "user_compute_stream": str(self._stream.cuda_stream),
                   "use_tf32": "0" if self.dtype == torch.float32 else "1"}  # TF32 would cost ~1e-3 in fp32
        if cuda_graph:
            options["enable_cuda_graph"] = "1"
        return [("CUDAExecutionProvider", options)]


# ONNX Runtime's messages: "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/x.h:46 void f(int, ...) What happened"
_ORT_CODE = re.compile(r"\[ONNXRuntimeError\] : \d+ : (\w+) : ")
_ORT_SOURCE = re.compile(r"/\S+\.(?:h|cc|cpp):\d+ (?:[\w:<>,&*\s]+\([^()]*\)\s*)?")


def _check_weights(data: bytes, where: str) -> None:
    """Refuse a graph whose weights live outside its file (external data: soat never writes it, and a path in it
    may point anywhere) or hold NaN or inf (they make every image NaN), naming the tensor."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:  # onnxruntime without the onnx package: nothing to parse the weights with
        return
    try:
        model = onnx.load_from_string(data)
    except Exception:  # not an ONNX protobuf: ONNX Runtime reports that in its own words
        return
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise SoatError(f"{where}: weight {tensor.name!r} is stored outside the file (external data "
                            f"{location!r}), which soat exports never do; the file was replaced. Re-export the "
                            "folder")
        try:
            values = numpy_helper.to_array(tensor)
        except Exception as e:  # a tensor whose bytes do not fit its type and shape
            raise SoatError(f"{where}: weight {tensor.name!r} cannot be read ({type(e).__name__}); the file is "
                            "corrupt. Re-export the folder") from None
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise SoatError(f"{where}: weight {tensor.name!r} holds NaN or inf values; the export is corrupt or was "
                            "made from a corrupt checkpoint. Export a good checkpoint again")


def _tensors(graph) -> list:
    """Every tensor a graph holds: its initializers and the tensors of its nodes' attributes, subgraphs included."""
    found = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            found += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found += _tensors(sub)
    return found
