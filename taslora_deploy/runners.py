"""Runners: zero-argument callables doing one inference of an artifact on a pre-allocated random batch.

They are what :mod:`taslora_deploy.timing` times. Each returns only when its work is done (CUDA is
synchronised) and carries ``.input_shape`` and ``.dtype`` (and ``.provider`` for onnxruntime). A runner whose
work goes to a known CUDA stream also carries ``.stream``, so the timing loop can record GPU compute time with
CUDA events on it.

CUDA-graph variants (``torch_runner(..., cuda_graph=True)``, :func:`trt_graph_runner`) capture one inference at a fixed
batch into a ``torch.cuda.CUDAGraph`` and replay it: launch overhead is paid once at capture, which is what
trtexec measures by default (its ``--noCudaGraph`` turns it off).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from taslora_deploy.devices import parse_device
from taslora_deploy.onnx_graph import onnx_input_info
from taslora_deploy.ort_parity import ort_session
from taslora_deploy.timing import Runner, synchronize

__all__ = ["ort_runner", "torch_runner", "trt_runner", "trt_graph_runner", "RUNTIMES", "runtime_device",
           "runtime_runner"]

RUNTIMES = ("ort-cpu", "ort-cuda", "torch-cpu", "torch-cuda", "torch-cuda-graph", "trt", "trt-graph")
"""Runtimes of :func:`runtime_runner`: onnxruntime (ONNX file), torch eager or CUDA-graph replay (module), TensorRT
(plan file or TrtRunner; ``trt-graph`` replays execute_async_v3 captured in a CUDA graph)."""


def ort_runner(
    path: str | os.PathLike,
    batch: int,
    input_shape: Sequence[int] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
    allow_spinning: bool = False,
) -> Runner:
    """Zero-arg callable running the ONNX model once on a pre-allocated random batch.

    Thread spinning is off by default so that alternating A/B runs do not steal
    cores from each other (idle onnxruntime workers otherwise busy-wait).

    ``input_shape`` (C, H, W) defaults to the static dims of the ONNX input.  On
    CUDA the input lives on the GPU and the output is bound on the GPU (IOBinding),
    so the timing excludes host/device copies.  The callable carries ``.session``,
    ``.provider`` and ``.input_shape`` attributes.
    """
    path = Path(path)
    _, dims, np_dtype = onnx_input_info(path)
    if input_shape is None:
        if any(d is None for d in dims[1:]):
            raise ValueError(f"{path} has non-static image dims {dims}; pass input_shape")
        input_shape = dims[1:]
    input_shape = tuple(int(s) for s in input_shape)
    sess = ort_session(path, device=device, threads=threads, allow_spinning=allow_spinning)
    in_name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    x = np.random.default_rng(seed).standard_normal((int(batch), *input_shape)).astype(np_dtype)

    kind, idx = parse_device(device)
    if kind == "cpu":
        feed = {in_name: x}

        def run():
            return sess.run(out_names, feed)
    else:
        import onnxruntime as ort

        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", idx)
        binding = sess.io_binding()
        binding.bind_ortvalue_input(in_name, x_dev)
        for name in out_names:
            binding.bind_output(name, "cuda", idx)

        def run():
            sess.run_with_iobinding(binding)

    run.session = sess  # type: ignore[attr-defined]
    run.provider = sess.get_providers()[0]  # type: ignore[attr-defined]
    run.input_shape = input_shape  # type: ignore[attr-defined]
    run.dtype = str(np.dtype(np_dtype))  # type: ignore[attr-defined]
    return run


def torch_runner(
    module: torch.nn.Module,
    batch: int,
    input_shape: Sequence[int],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    cuda_graph: bool = False,
) -> Runner:
    """Zero-arg callable running ``module`` (eval, inference_mode) on a pre-allocated batch.

    The module is moved to ``device``; the input uses ``dtype`` or the module's
    parameter dtype.  On CUDA each call synchronises the device so wall-clock
    timing is meaningful, and ``cuda_graph=True`` replays one forward pass captured
    in a ``torch.cuda.CUDAGraph`` instead (:func:`_graph_replay`).
    """
    device = torch.device(device)
    if cuda_graph:
        _require_cuda(device, "a CUDA graph")
    module, x = _module_and_batch(module, batch, input_shape, device, dtype, seed)
    if cuda_graph:
        run = _graph_replay(module, x, device)
    else:
        def run():
            with torch.inference_mode():
                out = module(x)
            synchronize(device)
            return out

    return _describe(run, input_shape, x.dtype, torch.cuda.current_stream(device) if device.type == "cuda" else None)


def _module_and_batch(module: torch.nn.Module, batch: int, input_shape: Sequence[int], device: torch.device,
                      dtype: torch.dtype | None, seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The module in eval mode on ``device`` and a seeded random batch in ``dtype`` (default: the parameters')."""
    module = module.eval().to(device)
    if dtype is None:
        dtype = next((p.dtype for p in module.parameters()), torch.float32)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((int(batch), *(int(s) for s in input_shape)), generator=gen).to(device=device, dtype=dtype)
    return module, x


def _describe(run: Runner, input_shape: Sequence[int], dtype: torch.dtype, stream: Any = None) -> Runner:
    run.input_shape = tuple(int(s) for s in input_shape)  # type: ignore[attr-defined]
    run.dtype = str(dtype).replace("torch.", "")  # type: ignore[attr-defined]
    if stream is not None:
        run.stream = stream  # type: ignore[attr-defined]
    return run


def _require_cuda(device: torch.device, what: str) -> None:
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"{what} needs a CUDA device, got {device} (cuda available: {torch.cuda.is_available()})")


def _graph_replay(module: torch.nn.Module, x: torch.Tensor, device: torch.device, warmup_calls: int = 3) -> Runner:
    """Capture one forward pass of ``module`` on ``x`` in a ``torch.cuda.CUDAGraph``; return its replay.

    Follows the documented capture recipe: warm-up calls on a side stream (lazy initialisation must not
    happen inside the capture), then capture under ``torch.cuda.graph``; the input and output are the
    graph's static tensors. Each call replays the graph on the current stream and synchronises.
    """
    _require_cuda(device, "a CUDA graph")
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.no_grad():
        with torch.cuda.stream(side):
            for _ in range(warmup_calls):
                module(x)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = module(x)

    def run():
        graph.replay()
        synchronize(device)
        return out

    run.graph = graph  # type: ignore[attr-defined]  # keeps the captured graph (and its memory pool) alive
    return run


def _engine_batch(engine: Any, batch: int, input_shape: Sequence[int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((int(batch), *(int(s) for s in input_shape)), generator=gen).to(
        device=engine.device, dtype=engine.input_dtype)


def trt_runner(engine: Any, batch: int, input_shape: Sequence[int], seed: int = 0) -> Runner:
    """Zero-arg callable running a :class:`~taslora_deploy.trt_engine.TrtRunner` on a pre-allocated batch.

    The batch lives on the engine's device in its input dtype; the engine synchronises its stream per call.
    """
    x = _engine_batch(engine, batch, input_shape, seed)

    def run():
        return engine(x)

    return _describe(run, input_shape, engine.input_dtype, engine.stream)


def trt_graph_runner(engine: Any, batch: int, input_shape: Sequence[int], seed: int = 0) -> Runner:
    """Zero-arg callable replaying a TensorRT inference (``execute_async_v3``) captured in a CUDA graph.

    ``engine`` is a :class:`~taslora_deploy.trt_engine.TrtRunner`. A fresh execution context of its engine
    gets fixed shapes and tensor addresses, runs once outside the capture (TensorRT finishes its lazy set-up
    there), then ``execute_async_v3`` is captured on a non-default stream with no synchronisation inside, as
    TensorRT's CUDA-graph notes require; one graph per batch size.
    """
    device = engine.device
    _require_cuda(device, "a TensorRT CUDA graph")
    x = _engine_batch(engine, batch, input_shape, seed)
    context = engine.engine.create_execution_context()  # its own context: the plain runner changes shapes
    if context is None or not context.set_input_shape(engine.input_name, tuple(x.shape)):
        raise ValueError(f"batch {batch} is outside the engine's optimisation profile {engine.batch_range}")
    outputs = {name: torch.empty(tuple(int(d) for d in context.get_tensor_shape(name)),
                                 dtype=engine.output_dtypes[name], device=device) for name in engine.output_names}
    context.set_tensor_address(engine.input_name, x.data_ptr())
    for name, tensor in outputs.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError("execute_async_v3 failed before CUDA-graph capture")
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        captured = context.execute_async_v3(stream.cuda_stream)
    if not captured:
        raise RuntimeError("execute_async_v3 failed under CUDA-graph capture")
    logits = outputs[engine.output_names[0]]

    def run():
        graph.replay()
        synchronize(device)
        return logits

    run.graph, run.context, run.buffers = graph, context, (x, outputs)  # type: ignore[attr-defined]  # keep alive
    return _describe(run, input_shape, engine.input_dtype, torch.cuda.current_stream(device))


def runtime_device(runtime: str) -> str:
    """'cuda' for the runtimes that run on a GPU, else 'cpu' (ValueError for an unknown runtime)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")
    return "cuda" if runtime.startswith("trt") or "cuda" in runtime else "cpu"


def runtime_runner(runtime: str, artifact: Any, batch: int, input_shape: Sequence[int] | None = None,
                   threads: int | None = None, seed: int = 0) -> Runner:
    """A runner of ``artifact`` on ``runtime`` (see :data:`RUNTIMES`): an ONNX path for ``ort-*``, a torch module
    for ``torch-*``, a plan path or :class:`~taslora_deploy.trt_engine.TrtRunner` for ``trt*``. Two artifacts
    made with the same ``seed`` get the same input values."""
    device = runtime_device(runtime)
    if runtime.startswith("ort"):
        return ort_runner(artifact, batch, input_shape, device=device, threads=threads, seed=seed)
    if input_shape is None:
        raise ValueError(f"runtime {runtime} needs the input shape (C, H, W)")
    if runtime.startswith("torch"):
        return torch_runner(artifact, batch, input_shape, device=device, seed=seed,
                            cuda_graph=runtime == "torch-cuda-graph")
    engine = artifact
    if isinstance(artifact, (str, os.PathLike)):
        from taslora_deploy.trt_engine import TrtRunner

        engine = TrtRunner(artifact)
    return (trt_graph_runner if runtime == "trt-graph" else trt_runner)(engine, batch, input_shape, seed=seed)
