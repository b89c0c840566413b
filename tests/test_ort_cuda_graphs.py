"""ONNX Runtime's CUDA graphs in the ORT backend (issue 15) and fp16 exports that stay fp16 throughout.

On the CPU: the capture bookkeeping (one slot per input signature, least recently used dropped,
the session rebuilt once its ``gpu_graph_id``s run out, static tensors in one shared buffer), the choice between the capture path and
the eager one, and the element types inside an fp16 export. With CUDA and onnxruntime-gpu: graphs
on equals graphs off exactly, and two inputs of one shape give two right outputs.
"""

from __future__ import annotations

import weakref

import pytest
import torch

import soat
import soat.export
from soat import loader as load_module
from soat.runtime.backends.ort_backend import CUDA_EP_OPTIONS, CUDA_EP_OPTIONS_ENV, OrtBackend, cuda_ep_options
from soat.runtime.backends.ort_cuda_graphs import ALIGN_BYTES, CaptureSlots, OrtCudaGraphs, Staging
from soat.runtime.graphs import graph_io
from soat.runtime.manifest import read_manifest
from conftest import make_styles, onnx_export

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

HAS_ORT_CUDA = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def export16(tmp_path_factory) -> str:
    return onnx_export("random", tmp_path_factory, "export16", dtype="fp16", size=16)


class Sessions:
    """A session factory that counts what it built."""

    def __init__(self):
        self.built = 0

    def __call__(self):
        self.built += 1
        return f"session{self.built}"


def slots(max_slots=3, max_ids=8):
    sessions = Sessions()
    made = []
    cs = CaptureSlots(sessions(), sessions, lambda s, sig, gid: made.append((s, sig, gid)) or (s, sig, gid),
                      max_slots=max_slots, max_ids=max_ids)
    return cs, sessions, made


# ---- capture bookkeeping (no GPU) --------------------------------------------------------------
def test_one_slot_per_signature_with_fresh_graph_ids():
    cs, sessions, made = slots()
    a = cs.slot(((1, 512),))
    assert cs.slot(((1, 512),)) is a  # same signature: the same capture replays
    b = cs.slot(((8, 512),))
    assert [gid for _, _, gid in made] == [1, 2]  # never 0 (ORT's default id) nor -1 (no capture)
    assert a[0] == b[0] == "session1" and sessions.built == 1


def test_least_recently_used_signature_is_dropped():
    cs, _, made = slots(max_slots=2)
    cs.slot(("a",))
    cs.slot(("b",))
    cs.slot(("a",))  # touch a: b is now the oldest
    cs.slot(("c",))
    assert list(cs.slots) == [("a",), ("c",)]
    cs.slot(("b",))  # back: a new capture under a new id, a is dropped
    assert list(cs.slots) == [("c",), ("b",)] and made[-1][2] == 4


def test_session_is_rebuilt_once_its_graph_ids_run_out():
    cs, sessions, made = slots(max_slots=2, max_ids=3)
    for sig in ("a", "b", "c"):
        cs.slot((sig,))
    assert sessions.built == 1
    cs.slot(("d",))  # a 4th capture: ORT cannot free one, so the whole session goes
    assert sessions.built == 2 and cs.session == "session2"
    assert list(cs.slots) == [("d",)] and made[-1] == ("session2", ("d",), 1)


def test_static_tensors_share_one_buffer_aligned_and_apart_within_a_capture():
    grown = []
    staging = Staging(torch.device("cpu"), torch.float16, lambda: grown.append(staging.buffer))
    a, b = staging.tensors([(2, 3), (5,)])
    assert a.data_ptr() == staging.buffer.data_ptr() and b.data_ptr() - a.data_ptr() == ALIGN_BYTES
    c, = staging.tensors([(4, 4)])  # another capture: the same memory (runs never overlap in time)
    assert c.data_ptr() == a.data_ptr() and grown == [None]
    old = staging.buffer
    d, e = staging.tensors([(300,), (7, 7)])  # larger: the captures in the old buffer are dropped first
    assert grown == [None, old] and staging.buffer is not old
    assert d.data_ptr() == staging.buffer.data_ptr() and e.data_ptr() - d.data_ptr() == 3 * ALIGN_BYTES
    size = staging.buffer.numel()
    staging.tensors([(size + 1,)])  # just larger: the buffer at least doubles, so growth is rare
    assert staging.buffer.numel() == 2 * size and len(grown) == 3


def test_callbacks_hold_their_owner_weakly():
    from soat.runtime.backends.ort_cuda_graphs import weak_method

    class Owner:
        def ping(self) -> str:
            return "pong"
    owner = Owner()
    call, ref = weak_method(owner.ping), weakref.ref(owner)
    assert call() == "pong"
    del owner
    assert ref() is None  # no cycle kept it: freed at once, not at the next cyclic GC


class FakeStream:
    device = torch.device("cuda", 0)


def test_a_larger_staging_buffer_drops_every_capture(g8):
    graphs = OrtCudaGraphs(ort, g8.config, Sessions(), FakeStream(), torch.float16)
    cs, _, _ = slots()
    cs.slot(("a",))
    graphs._graphs = {"conv1": cs, "input": None}  # input: a graph ORT could not capture
    graphs._drop_slots()
    assert not cs.slots and cs.ids_used == 1  # ids are never reused: ORT keeps the old captures


def test_graph_ort_cannot_capture_runs_without_one(g8):
    def refuse(graph_id):
        raise RuntimeError("This session cannot use the graph capture feature as requested by the user")

    graphs = OrtCudaGraphs(ort, g8.config, refuse, FakeStream(), torch.float16)
    with pytest.warns(UserWarning, match="cannot capture graph 'input'"):
        assert not graphs.capturable("input")
    assert not graphs.capturable("input")  # asked once


def test_graph_session_errors_of_ours_are_not_swallowed(g8):
    def tampered(graph_id):
        raise soat.SoatError("graph 'input': no longer matches the sha256")

    graphs = OrtCudaGraphs(ort, g8.config, tampered, FakeStream(), torch.float16)
    with pytest.raises(soat.SoatError, match="sha256"):
        graphs.capturable("input")


# ---- which path runs --------------------------------------------------------------------------
@pytest.mark.parametrize("graphs", [True, False])
def test_load_passes_graphs_to_the_ort_backend(export8, monkeypatch, graphs):
    seen = []

    class Recording(OrtBackend):
        def __init__(self, manifest, device, dtype, cuda_graphs=False):
            seen.append(cuda_graphs)
            super().__init__(manifest, device, dtype, cuda_graphs)

    monkeypatch.setattr(load_module, "OrtBackend", Recording)
    soat.load(export8, backend="onnxruntime", cuda_graphs=graphs)
    assert seen == [graphs]


def test_capturable_graphs_run_through_the_captures_others_eagerly(export8, g8):
    backend = soat.load(export8, backend="onnxruntime").backend
    assert backend._graphs is None  # on the CPU there are no CUDA graphs, whatever graphs= says
    wplus = torch.randn(2, g8.config.n_latent, g8.config.style_dim)
    eager = backend.run("styles", {"wplus": wplus})["styles"]

    class Captures:
        def capturable(self, graph_id):
            return graph_id == "mapping"

        def run(self, graph_id, inputs):
            return {"w": "from the capture"}

    backend._graphs = Captures()
    assert backend.run("mapping", {"z": torch.randn(2, g8.config.style_dim)}) == {"w": "from the capture"}
    assert torch.equal(backend.run("styles", {"wplus": wplus})["styles"], eager)


# ---- fp16 exports -----------------------------------------------------------------------------
@pytest.mark.full
def test_fp16_export_has_no_fp32_tensor_and_no_cast(export16):
    """Weights, constants, every intermediate value and the I/O of every graph are fp16; no Cast
    nodes. The only non-fp16 values are int64 shapes, axes and indices (and one bool mask of
    the constant input's Expand)."""
    manifest = read_manifest(export16)
    for graph_id in manifest.graphs:
        model = onnx.shape_inference.infer_shapes(onnx.load(manifest.graph_path(graph_id)), strict_mode=True)
        g = model.graph
        assert not [n for n in g.node if n.op_type == "Cast"], graph_id
        values = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
        assert set(values) >= {o for n in g.node for o in n.output}, f"{graph_id}: untyped values"
        tensors = [*g.initializer, *(a.t for n in g.node if n.op_type == "Constant" for a in n.attribute)]
        float_types = {t.data_type for t in tensors} | set(values.values())
        float_types -= {onnx.TensorProto.INT64, onnx.TensorProto.BOOL}
        assert float_types == {onnx.TensorProto.FLOAT16}, graph_id
        names, _ = graph_io(manifest.config, graph_id)
        assert {values[n] for n in names} == {onnx.TensorProto.FLOAT16}


def test_cuda_provider_options_from_the_environment(monkeypatch):
    """SOAT_ORT_CUDA_OPTIONS replaces the CUDA provider's extra options (to time them); a malformed value is named."""
    monkeypatch.delenv(CUDA_EP_OPTIONS_ENV, raising=False)
    assert cuda_ep_options() == CUDA_EP_OPTIONS
    monkeypatch.setenv(CUDA_EP_OPTIONS_ENV, " prefer_nhwc=1, cudnn_conv_algo_search=HEURISTIC ,")
    assert cuda_ep_options() == {"prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC"}
    for bad in ("prefer_nhwc", "prefer_nhwc=", "a=b=c"):
        monkeypatch.setenv(CUDA_EP_OPTIONS_ENV, bad)
        with pytest.raises(soat.SoatError, match=CUDA_EP_OPTIONS_ENV):
            cuda_ep_options()


# ---- on the GPU -------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_ORT_CUDA, reason="needs CUDA and onnxruntime-gpu")
def test_cuda_graphs_equal_eager_exactly_and_keep_no_stale_buffers(tmp_path):
    soat.export.export("random", tmp_path, dtype="fp16", size=64, progress=False)
    on = soat.load(str(tmp_path), backend="onnxruntime", device="cuda", dtype="fp16")
    off = soat.load(str(tmp_path), backend="onnxruntime", device="cuda", dtype="fp16", cuda_graphs=False)
    assert on.backend._graphs is not None and off.backend._graphs is None
    s1, s2 = (make_styles(on, batch=2, seed=seed) for seed in (1, 2))
    s3 = make_styles(on, batch=1, seed=3)  # other shapes: captures whose static tensors overlap the first ones
    for task, args in (("generate", (s1,)), ("merge_extension", (s1, s2)), ("generate", (s3,)),
                       ("merge_extension", (s3, s3)), ("generate", (s1,))):
        first = getattr(on, task)(*args)  # captures (replays for the last one)
        again = getattr(on, task)(*args)  # replays
        want = getattr(off, task)(*args)
        assert torch.equal(first, want) and torch.equal(again, want), task
    a, b = on.generate(s1), on.generate(s2)  # one shape, two inputs: two right outputs
    assert not torch.equal(a, b)
    assert torch.equal(a, off.generate(s1)) and torch.equal(b, off.generate(s2))  # a was not overwritten
