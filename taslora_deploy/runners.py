"""Runners: zero-argument callables doing one inference of an artifact on a pre-allocated random batch.

They are what :mod:`taslora_deploy.timing` times. Each returns only when its work is done (CUDA is
synchronised) and carries ``.input_shape`` and ``.dtype`` (and ``.provider`` for onnxruntime).
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

__all__ = ["ort_runner", "torch_runner", "trt_runner"]


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
) -> Runner:
    """Zero-arg callable running ``module`` (eval, inference_mode) on a pre-allocated batch.

    The module is moved to ``device``; the input uses ``dtype`` or the module's
    parameter dtype.  On CUDA each call synchronises the device so wall-clock
    timing is meaningful.
    """
    device = torch.device(device)
    module = module.eval().to(device)
    if dtype is None:
        dtype = next((p.dtype for p in module.parameters()), torch.float32)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((int(batch), *(int(s) for s in input_shape)), generator=gen).to(device=device, dtype=dtype)

    def run():
        with torch.inference_mode():
            out = module(x)
        synchronize(device)
        return out

    run.input_shape = tuple(int(s) for s in input_shape)  # type: ignore[attr-defined]
    run.dtype = str(dtype).replace("torch.", "")  # type: ignore[attr-defined]
    return run


def trt_runner(engine: Any, batch: int, input_shape: Sequence[int], seed: int = 0) -> Runner:
    """Zero-arg callable running a :class:`~taslora_deploy.trt_engine.TrtRunner` on a pre-allocated batch.

    The batch lives on the engine's device in its input dtype; the engine synchronises its stream per call.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((int(batch), *(int(s) for s in input_shape)), generator=gen).to(
        device=engine.device, dtype=engine.input_dtype)

    def run():
        return engine(x)

    return run
