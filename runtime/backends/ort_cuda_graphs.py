"""ONNX Runtime's own CUDA graphs for the ORT backend: one capture per (graph, input shapes), replays after.

With the CUDA EP provider option ``enable_cuda_graph``, ONNX Runtime records a graph's kernels
into a CUDA graph and replays it on later runs, which saves the per-kernel launch cost (most
of a node's time at small batches). A replay reads and writes the addresses seen at capture
and ignores the IOBinding, so each input signature gets static input and output buffers,
bound once. One session per graph holds several captures, told apart by the run config
entry ``gpu_graph_id`` (ORT >= 1.18; -1 runs without a graph, 0 is ORT's own default).

The first run of a new signature is slow: inside that one ``run_with_iobinding`` ORT runs
the graph normally first (so that its arena already holds every buffer: nothing may be
allocated while capturing), then captures it and replays it. Later runs replay only.

Constraints (ORT's CUDA EP): every node on the CUDA EP (CPU nodes only for shapes, no
Memcpy), no control flow, fixed I/O addresses and shapes per ``gpu_graph_id``, no
``Run`` on the same session from two threads (calls here are serialised by a lock), and no
arena shrinkage (``memory.enable_memory_arena_shrinkage``): the captures keep pointers into
the arena. The captures of one session share its arena, as all of them replay on one stream.

The static tensors of every capture share one buffer too (``Staging``): each run copies its
inputs in and its output out on ORT's stream before the next run starts, so the buffers of
different captures may overlap, and static memory is that of the largest capture, however
many shapes a caller uses. When a capture needs a larger buffer, every other capture is
dropped with the old one and captured again on its next run, into the new buffer.
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ...errors import SoatError
from ..capabilities import precision
from ..lru import LRU
from ..graphs import graph_io, onnx_outputs, output_shape

MAX_SIGNATURES = 16  # per graph: captures kept, least recently used dropped first
MAX_CAPTURES = 4 * MAX_SIGNATURES  # per session: ORT frees no single capture, so the session is rebuilt then
ALIGN_BYTES = 256  # each static tensor starts on a 256-byte boundary, as cudaMalloc'd memory does

Signature = tuple[tuple[int, ...], ...]


def weak_method(method: Callable) -> Callable:
    """``method`` called through a weak reference to its object: a callback that keeps no cycle alive
    (sessions, arenas and buffers are then freed when their owner is, not at the next cyclic GC)."""
    ref = weakref.WeakMethod(method)
    return lambda *args: ref()(*args)


def _warn_uncapturable(graph_id: str, error: Exception) -> None:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    warnings.warn(f"ONNX Runtime cannot capture graph {graph_id!r} as a CUDA graph ({reason}); it runs without one",
                  stacklevel=5)


@dataclass
class Slot:
    """One signature's capture: static buffers bound once, and the run options naming its ``gpu_graph_id``."""

    session: Any
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor
    binding: Any
    run_options: Any


class Staging:
    """Static tensors for every capture, as views at fixed offsets of one shared buffer.

    A capture's tensors never overlap one another; those of different captures do (see the
    module doc). A capture larger than the buffer gets a new one, after ``on_grow`` has dropped
    the captures in the old one (so that it is freed first).
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, on_grow: Callable[[], None]):
        self.device, self.dtype, self.on_grow = device, dtype, on_grow
        self.buffer: torch.Tensor | None = None

    def tensors(self, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """One tensor per shape, all in the buffer (a new one is allocated on the current stream)."""
        align = ALIGN_BYTES // torch.empty(0, dtype=self.dtype).element_size()
        sizes = [math.prod(shape) for shape in shapes]
        starts = [0]
        for n in sizes:
            starts.append(starts[-1] + -(-n // align) * align)
        if self.buffer is None or self.buffer.numel() < starts[-1]:
            # at least doubled: the nodes of a chain grow one after another, and every growth drops all captures
            numel = max(starts[-1], 2 * self.buffer.numel()) if self.buffer is not None else starts[-1]
            self.on_grow()
            self.buffer = None
            self.buffer = torch.empty(numel, device=self.device, dtype=self.dtype)
        return [self.buffer[a:a + n].view(shape) for a, n, shape in zip(starts, sizes, shapes)]


class CaptureSlots:
    """One graph's captures: a session made with ``enable_cuda_graph`` and a slot per input signature.

    At most ``max_slots`` slots are kept (least recently used dropped: its capture is never
    replayed again). ORT cannot free one capture, so once ``max_ids`` ids were handed out the
    session is rebuilt and every slot dropped: what a caller with ever new shapes leaves in ORT
    stays bounded.

    Args:
        session: the first session (built by the caller, which handles a graph ORT cannot capture).
        new_session: builds another session of the same graph.
        new_slot: ``(session, signature, gpu_graph_id) -> Slot``.
    """

    def __init__(self, session: Any, new_session: Callable[[], Any], new_slot: Callable[[Any, Signature, int], Any],
                 max_slots: int = MAX_SIGNATURES, max_ids: int = MAX_CAPTURES):
        self.session = session
        self._new_session = new_session
        self._new_slot = new_slot
        self.max_slots, self.max_ids = max_slots, max_ids
        self.slots: LRU[Signature, Any] = LRU(max_slots)
        self.ids_used = 0

    def slot(self, signature: Signature) -> Any:
        """The slot of ``signature``, made (with a fresh ``gpu_graph_id``) if it has none."""
        found = self.slots.peek(signature)
        if found is not None:
            return found
        if self.ids_used >= self.max_ids:
            self.slots.clear()  # the old session and its buffers go before the new one is built
            self.session = None
            self.session = self._new_session()
            self.ids_used = 0
        return self.slots.get(signature, lambda: self._new_slot(self.session, signature, self._next_id()))

    def _next_id(self) -> int:
        self.ids_used += 1  # ids from 1: 0 is ORT's default id, -1 turns capture off
        return self.ids_used


class OrtCudaGraphs:
    """Runs graphs through ORT's CUDA graph capture, on ``stream`` (the sessions' ``user_compute_stream``).

    Args:
        ort: the ``onnxruntime`` module.
        config: the model layout (graph I/O names and shapes).
        new_session: ``graph_id -> InferenceSession`` made with ``enable_cuda_graph``.
        stream: ORT's stream, ordered against torch's current stream on the GPU. ORT's replay itself
            synchronizes this stream (ORT's CUDA graph manager does, after each replay), so the host
            waits there for the work queued before each node: replays save launches, not that wait.
        dtype: the export's dtype.
    """

    def __init__(self, ort: Any, config: Any, new_session: Callable[[str], Any], stream: torch.cuda.Stream,
                 dtype: torch.dtype):
        self.ort, self.config, self.stream, self.dtype = ort, config, stream, dtype
        self.device = stream.device
        self._new_session = new_session
        self._graphs: dict[str, CaptureSlots | None] = {}  # None: ORT cannot capture this graph
        self._staging = Staging(self.device, dtype, weak_method(self._drop_slots))
        self._lock = threading.Lock()

    def capturable(self, graph_id: str) -> bool:
        """Whether ``graph_id`` runs from captures; the first ask builds its session."""
        with self._lock:
            if graph_id not in self._graphs:
                self._graphs[graph_id] = self._open(graph_id)
            return self._graphs[graph_id] is not None

    def run(self, graph_id: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """One graph from its capture (captured first when the signature is new); the output is the
        caller's own tensor, a copy of the static output that the next run of this signature overwrites.
        None when ORT fails to capture the graph: it is then never captured again (the caller runs it
        without a graph)."""
        names, outputs = graph_io(self.config, graph_id)
        signature = tuple(tuple(inputs[n].shape) for n in names)
        with self._lock:
            captures = self._graphs[graph_id]
            first = signature not in captures.slots
            slot = captures.slot(signature)
            current = torch.cuda.current_stream(self.device)
            out = torch.empty_like(slot.output)  # on the current stream: reused only after the wait below
            # every access to the static buffers is on ORT's stream, so calls from any stream stay ordered
            self.stream.wait_stream(current)
            with torch.cuda.stream(self.stream):
                for name in names:
                    slot.inputs[name].copy_(inputs[name].detach())
                try:
                    slot.session.run_with_iobinding(slot.binding, slot.run_options)
                except Exception as e:  # ORT's own types; a failed capture (a node that syncs or allocates)
                    if not first:
                        raise
                    self._graphs[graph_id] = None
                    _warn_uncapturable(graph_id, e)
                    return None
                out.copy_(slot.output)
            current.wait_stream(self.stream)
        return {outputs[0]: out}

    def _drop_slots(self) -> None:
        for captures in self._graphs.values():
            if captures is not None:
                captures.slots.clear()

    def _open(self, graph_id: str) -> CaptureSlots | None:
        try:
            session = self._new_session(graph_id)
        except SoatError:
            raise
        except Exception as e:  # ORT's own exception types; it refuses graphs with CPU compute nodes
            _warn_uncapturable(graph_id, e)
            return None
        me = weakref.ref(self)  # the slots must not keep this object (and its sessions) alive
        return CaptureSlots(session, lambda: me()._new_session(graph_id),
                            lambda s, sig, gid: me()._slot(graph_id, s, sig, gid))

    def _slot(self, graph_id: str, session: Any, signature: Signature, gpu_graph_id: int) -> Slot:
        names = graph_io(self.config, graph_id)[0]
        shapes = dict(zip(names, signature))
        idx, elem = self.device.index or 0, precision(self.dtype).numpy_dtype
        with torch.cuda.stream(self.stream):  # a freed buffer is then reused only by work ordered after ORT's
            *static, output = self._staging.tensors([*shapes.values(), output_shape(self.config, graph_id, shapes)])
        inputs = dict(zip(names, static))
        binding = session.io_binding()
        for name, t in inputs.items():
            binding.bind_input(name, "cuda", idx, elem, tuple(t.shape), t.data_ptr())
        binding.bind_output(onnx_outputs(self.config, graph_id)[0], "cuda", idx, elem, tuple(output.shape),
                            output.data_ptr())
        options = self.ort.RunOptions()
        options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        options.add_run_config_entry("gpu_graph_id", str(gpu_graph_id))
        return Slot(session, inputs, output, binding, options)
