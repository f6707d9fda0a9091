"""TensorRT engine build / run for exported image classifiers (import-guarded).

This module imports without ``tensorrt``; every function that needs it calls
:func:`require_tensorrt`, which raises :class:`TensorRTUnavailable` with a one-line
reason.  Written against the TensorRT 10.12+ / 11.x Python API:

* strongly typed networks only (precision comes from the ONNX graph: the fp16 engine is built from
  ``model_fp16.onnx`` and the int8 engine from the QDQ ``model_int8.onnx`` that
  :mod:`taslora_deploy.precision.convert` writes; there is no FP16/INT8 builder flag in 11.x),
* name-based I/O tensor API, ``set_tensor_address`` + ``execute_async_v3``,
* torch CUDA tensors and streams for memory (no PyCUDA / cuda-python).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from taslora_core.artifact_read import read_bytes_checked
from taslora_core.atomic import atomic_write_bytes
from taslora_deploy.errors import ParityError
from taslora_deploy.onnx_export import OUTPUT_NAME

__all__ = [
    "TensorRTUnavailable",
    "EngineBuildError",
    "ParityError",
    "tensorrt_status",
    "require_tensorrt",
    "build_engine",
    "TrtRunner",
    "compare_trt_to_ort",
]

_NOT_INSTALLED = ("tensorrt is not installed: pip install 'taslora[trt]' on a CUDA machine (needs NVIDIA's index; "
                  "`taslora doctor` shows what this machine has)")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA device for it) is not available in this environment."""


class EngineBuildError(RuntimeError):
    """Parsing the ONNX model or building the TensorRT engine failed."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _import_tensorrt():
    import tensorrt as trt  # noqa: PLC0415  (optional dependency)

    return trt


def tensorrt_status() -> tuple[bool, str]:
    """``(available, reason)``; reason is a single line in both cases."""
    try:
        trt = _import_tensorrt()
    except ImportError:
        return False, _NOT_INSTALLED
    except Exception as exc:  # e.g. OSError: libnvinfer.so not found
        return False, _one_line(f"tensorrt failed to import ({type(exc).__name__}: {exc})")
    try:
        cuda_ok = torch.cuda.is_available()
    except Exception as exc:  # pragma: no cover - broken CUDA installs
        return False, _one_line(f"no CUDA device (torch.cuda.is_available() raised {exc})")
    if not cuda_ok:
        return False, "no CUDA device (torch.cuda.is_available() is False); TensorRT needs an NVIDIA GPU"
    version = getattr(trt, "__version__", "?")
    return True, _one_line(f"tensorrt {version} on {torch.cuda.get_device_name()}")


def require_tensorrt():
    """Return the ``tensorrt`` module or raise :class:`TensorRTUnavailable` (one-line message)."""
    ok, reason = tensorrt_status()
    if not ok:
        raise TensorRTUnavailable(_one_line(reason))
    return _import_tensorrt()


# --------------------------------------------------------------------------- helpers


def _make_logger(trt):
    """A logger that forwards warnings and errors to stderr and keeps the errors for exceptions."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self._print_level = int(trt.ILogger.Severity.WARNING)
            self._error_level = int(trt.ILogger.Severity.ERROR)
            self.errors: list[str] = []

        def log(self, severity, msg):  # TRT callback; lower value = more severe
            level = int(severity)
            if level <= self._error_level:
                self.errors.append(str(msg))
            if level <= self._print_level:
                print(f"[TensorRT] {getattr(severity, 'name', level)}: {msg}", flush=True)

    return _Logger()


def _torch_dtype(trt, trt_dtype) -> torch.dtype:
    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "INT8": torch.int8,
        "UINT8": torch.uint8,
        "BOOL": torch.bool,
    }
    for name, tdt in table.items():
        member = getattr(trt.DataType, name, None)
        if member is not None and trt_dtype == member:
            return tdt
    raise TypeError(f"TensorRT dtype {trt_dtype} has no torch equivalent here")


def _full_shape(net_shape: Sequence[int], batch: int, input_shape: Sequence[int], name: str) -> tuple[int, ...]:
    dims = list(net_shape)
    if len(dims) != 1 + len(input_shape):
        raise EngineBuildError(
            f"input {name!r} has rank {len(dims)} in the ONNX model; input_shape {tuple(input_shape)} implies rank "
            f"{1 + len(input_shape)}"
        )
    out = [int(batch)]
    for got, want in zip(dims[1:], input_shape):
        if got not in (-1, int(want)):
            raise EngineBuildError(f"input {name!r} has static dims {tuple(dims)}, incompatible with {tuple(input_shape)}")
        out.append(int(want))
    return tuple(out)


# --------------------------------------------------------------------------- build


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    input_shape: Sequence[int],
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 64,
    timing_cache_path: str | os.PathLike | None = None,
    workspace_bytes: int = 1 << 30,
) -> Path:
    """Build a serialized TensorRT engine (plan) from an ONNX file with a dynamic batch dim.

    One optimisation profile ``min_batch <= opt_batch <= max_batch`` is added for
    every network input.  The network is created strongly typed (portable flag
    expression for TRT 10.12+ and 11.x), so precision follows the ONNX tensor types.
    For fp32 networks TF32 is cleared for bit-closer results.  The timing cache is
    loaded from ``timing_cache_path`` when present and written back after the build.
    Plan and cache are written atomically (temp file + ``os.replace``).
    """
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    plan_path = Path(plan_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(onnx_path)
    if not (1 <= int(min_batch) <= int(opt_batch) <= int(max_batch)):
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    input_shape = tuple(int(s) for s in input_shape)

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            try:
                errors.append(f"node {err.node()}: {err.desc()} (code {err.code()})")
            except Exception:
                errors.append(str(err))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errors or logger.errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))

    profile = builder.create_optimization_profile()
    fp32_network = True
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if tensor.dtype != trt.float32:
            fp32_network = False
        if -1 not in shape:
            continue  # static input: no profile entry needed
        profile.set_shape(
            tensor.name,
            _full_shape(shape, min_batch, input_shape, tensor.name),
            _full_shape(shape, opt_batch, input_shape, tensor.name),
            _full_shape(shape, max_batch, input_shape, tensor.name),
        )
    config.add_optimization_profile(profile)

    if fp32_network and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)

    cache_path = Path(timing_cache_path) if timing_cache_path is not None else None
    cache_bytes = b""
    if cache_path is not None and cache_path.is_file():
        cache_bytes = cache_path.read_bytes()
    try:
        timing_cache = config.create_timing_cache(cache_bytes)
    except Exception:  # unreadable cache file
        timing_cache = None
    if timing_cache is None or not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        if cache_bytes:  # stale cache (other TRT version / GPU): start fresh instead of failing
            print(f"[TensorRT] WARNING: timing cache {cache_path} rejected; starting an empty one", flush=True)
            timing_cache = config.create_timing_cache(b"")
            config.set_timing_cache(timing_cache, ignore_mismatch=False)
        else:
            raise EngineBuildError("could not attach an empty timing cache to the builder config")

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(
            f"build_serialized_network failed for {onnx_path}: " + ("; ".join(logger.errors) or "see TensorRT log")
        )
    atomic_write_bytes(plan_path, memoryview(plan))
    if cache_path is not None:
        atomic_write_bytes(cache_path, memoryview(config.get_timing_cache().serialize()))
    return plan_path


# --------------------------------------------------------------------------- run


class TrtRunner:
    """Run a serialized engine on torch CUDA tensors.

    ``runner(images)`` accepts a ``(B, C, H, W)`` tensor on any device and dtype;
    it is moved to the engine's device and cast to the engine's input dtype (fp16
    for engines built from a half-precision ONNX).  Returns the first output
    (``logits``) as a CUDA tensor of the engine's output dtype.
    """

    def __init__(self, plan_path: str | os.PathLike, device: int | str | torch.device | None = None):
        trt = require_tensorrt()
        self._trt = trt
        self.plan_path = Path(plan_path)
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"TrtRunner needs a CUDA device, got {self.device}")
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(
                read_bytes_checked(self.plan_path, "TensorRT engine", "rebuild it with `taslora export --trt`"))
            if self.engine is None:
                raise EngineBuildError(
                    f"could not deserialize {self.plan_path} (plans only load on the TensorRT version and GPU that "
                    f"built them): " + "; ".join(self._logger.errors)
                )
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise EngineBuildError(f"could not create an execution context for {self.plan_path}")
            self.stream = torch.cuda.Stream(device=self.device)

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.input_names) != 1:
            raise EngineBuildError(f"expected one engine input, got {self.input_names}")
        if not self.output_names:
            raise EngineBuildError("engine has no outputs")
        if OUTPUT_NAME in self.output_names:  # put logits first
            self.output_names.remove(OUTPUT_NAME)
            self.output_names.insert(0, OUTPUT_NAME)
        self.input_name = self.input_names[0]
        self.input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in self.output_names}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Engine input shape without the batch dim, i.e. ``(C, H, W)``."""
        return tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))[1:]

    @property
    def batch_range(self) -> tuple[int, int, int]:
        """(min, opt, max) batch of optimisation profile 0."""
        mn, opt, mx = self.engine.get_tensor_profile_shape(self.input_name, 0)
        return int(mn[0]), int(opt[0]), int(mx[0])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(device=self.device, dtype=self.input_dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(
                f"input shape {tuple(x.shape)} is outside the engine's optimisation profile (batch range "
                f"{self.batch_range}, image {self.input_shape})"
            )
        outputs = {}
        for name in self.output_names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name!r} shape unresolved after set_input_shape: {shape}")
            outputs[name] = torch.empty(shape, dtype=self.output_dtypes[name], device=self.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        for name, t in outputs.items():
            self.context.set_tensor_address(name, t.data_ptr())
        # x was produced on the caller's current stream: order our stream after it
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("execute_async_v3 failed: " + "; ".join(self._logger.errors[-5:]))
        self.stream.synchronize()  # keeps x/outputs alive until the engine is done
        return outputs[self.output_names[0]]


# --------------------------------------------------------------------------- compare


def compare_trt_to_ort(
    plan: str | os.PathLike,
    onnx_fp32: str | os.PathLike,
    input_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 8),
    fp16: bool = False,
    atol: float = 1e-3,
    mean_atol: float = 1e-2,
    min_top1: float = 0.99,
    seed: int = 0,
) -> dict:
    """Compare a TensorRT engine with onnxruntime (CPU) on the fp32 ONNX model.

    fp32 engines: max abs diff must be ``<= atol`` (default 1e-3).
    fp16 engines: mean abs error ``<= mean_atol`` (default 1e-2) and top-1 agreement
    over all compared rows ``>= min_top1`` (default 0.99).  Raises
    :class:`ParityError` with the numbers when violated; returns the report.
    """
    from taslora_deploy.ort_parity import ort_session

    runner = TrtRunner(plan)
    sess = ort_session(onnx_fp32, device="cpu")
    in_name = sess.get_inputs()[0].name
    input_shape = tuple(int(s) for s in input_shape)
    rng = np.random.default_rng(int(seed))

    per_batch: dict[int, dict[str, float]] = {}
    agree = total = 0
    abs_sum = 0.0
    n_elem = 0
    overall_max = 0.0
    problems: list[str] = []
    for b in batch_sizes:
        x = rng.standard_normal((int(b), *input_shape)).astype(np.float32)
        ref = sess.run(None, {in_name: x})[0].astype(np.float64)
        got = runner(torch.from_numpy(x)).float().cpu().numpy().astype(np.float64)
        if got.shape != ref.shape:
            raise ParityError(f"batch {b}: TensorRT output shape {got.shape} != onnxruntime {ref.shape}")
        if not np.isfinite(got).all():
            problems.append(f"batch {b}: non-finite TensorRT outputs")
        diff = np.abs(got - ref)
        entry = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
        if ref.ndim == 2:
            a = int((got.argmax(1) == ref.argmax(1)).sum())
            entry["top1_agreement"] = a / ref.shape[0]
            agree += a
            total += ref.shape[0]
        per_batch[int(b)] = entry
        abs_sum += float(diff.sum())
        n_elem += diff.size
        overall_max = max(overall_max, entry["max_abs_diff"])

    mean_abs = abs_sum / max(n_elem, 1)
    top1 = agree / total if total else None
    report = {
        "plan": str(plan),
        "onnx": str(onnx_fp32),
        "precision": "fp16" if fp16 else "fp32",
        "engine_input_dtype": str(runner.input_dtype),
        "max_abs_diff": overall_max,
        "mean_abs_diff": mean_abs,
        "top1_agreement": top1,
        "per_batch": per_batch,
    }
    if fp16:
        report.update(mean_atol=float(mean_atol), min_top1=float(min_top1))
        if not mean_abs <= mean_atol:
            problems.append(f"mean abs error {mean_abs:.3e} > {mean_atol:.1e}")
        if top1 is not None and not top1 >= min_top1:
            problems.append(f"top-1 agreement {top1:.4f} < {min_top1}")
    else:
        report.update(atol=float(atol))
        if not overall_max <= atol:
            problems.append(f"max abs diff {overall_max:.3e} > atol {atol:.1e}")
    report["ok"] = not problems
    if problems:
        raise ParityError(f"TensorRT vs onnxruntime parity failed ({report['precision']}): " + "; ".join(problems)
                          + f" (per batch: {per_batch})")
    return report
