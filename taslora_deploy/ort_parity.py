"""onnxruntime sessions on a verified execution provider, and torch-vs-ONNX parity of an exported model.

``onnxruntime`` is imported lazily.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from taslora_deploy.devices import module_device_dtype, parse_device
from taslora_deploy.errors import ExportError, OnnxRuntimeMissing, ParityError, ProviderUnavailableError

__all__ = ["ort_session", "check_onnx_parity", "require_onnxruntime", "ONNXRUNTIME_INSTALL"]

ONNXRUNTIME_INSTALL = "pip install 'taslora[cpu]'"  # pyproject.toml's extras: `cpu` (onnxruntime) or `gpu`

_ONNX_TO_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


def require_onnxruntime():
    """The onnxruntime module, or :class:`OnnxRuntimeMissing` naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeMissing(
            f"onnxruntime is not installed, so the ONNX steps cannot run: {ONNXRUNTIME_INSTALL} "
            "(or 'taslora[gpu]' on a CUDA machine, never both)") from None
    return onnxruntime


def ort_session(
    path: str | os.PathLike,
    device: str = "cpu",
    threads: int | None = None,
    allow_spinning: bool = True,
):
    """Create an onnxruntime ``InferenceSession`` on ``device`` ('cpu' or 'cuda[:N]').

    The requested execution provider is verified with ``session.get_providers()``
    after creation: onnxruntime silently falls back to CPU when the CUDA provider
    cannot be loaded, which here raises :class:`ProviderUnavailableError` instead.
    ``threads`` sets ``intra_op_num_threads`` (and ``inter_op_num_threads=1``).
    ``allow_spinning=False`` stops idle worker threads from busy-waiting, which
    matters when several sessions (or torch) share few cores.
    """
    ort = require_onnxruntime()
    kind, idx = parse_device(device)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if not allow_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")

    if kind == "cpu":
        wanted = "CPUExecutionProvider"
        providers: list = [wanted]
    else:
        wanted = "CUDAExecutionProvider"
        available = ort.get_available_providers()
        if wanted not in available:
            raise ProviderUnavailableError(
                f"device={device!r} needs onnxruntime's {wanted}, but this onnxruntime build only has {available}; "
                "install 'onnxruntime-gpu' (after uninstalling 'onnxruntime') on a CUDA machine"
            )
        providers = [(wanted, {"device_id": idx})]

    sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    active = sess.get_providers()
    if wanted not in active:
        raise ProviderUnavailableError(
            f"requested {wanted} for device={device!r} but the session runs on {active} "
            "(onnxruntime fell back silently; check CUDA/cuDNN libraries and the GPU driver)"
        )
    return sess


def _ort_input_dtype(sess) -> Any:
    t = sess.get_inputs()[0].type
    if t not in _ONNX_TO_NP:
        raise ExportError(f"unsupported ONNX input type {t}")
    return _ONNX_TO_NP[t]


def _as_batches(inputs: Any) -> list[torch.Tensor]:
    if inputs is None:
        return []
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return [torch.as_tensor(inputs)]
    return [torch.as_tensor(x) for x in inputs]


def check_onnx_parity(
    model: torch.nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 7),
    atol: float = 1e-4,
    inputs: Any = None,
    seed: int = 0,
) -> dict:
    """Compare ``model`` (torch, eval mode) with the ONNX file on onnxruntime CPU.

    Random normal batches of each size in ``batch_sizes`` are used (seeded), plus
    the given real ``inputs`` (a ``(N, C, H, W)`` tensor/array or a list of them).
    Returns ``{"atol", "max_abs_diff" (overall), "per_batch": {B: diff},
    "inputs": [diff, ...], "top1_agreement", "provider", "ok"}``; raises
    :class:`ParityError` (with all numbers) when any diff exceeds ``atol`` or an
    output is not finite / has the wrong shape.
    """
    input_shape = tuple(int(s) for s in input_shape)
    sess = ort_session(path, device="cpu")
    in_name = sess.get_inputs()[0].name
    np_dtype = _ort_input_dtype(sess)
    model = model.eval()
    device, mdtype = module_device_dtype(model)

    gen = torch.Generator().manual_seed(int(seed))
    cases: list[tuple[Any, torch.Tensor]] = []
    for b in batch_sizes:
        cases.append((int(b), torch.randn((int(b), *input_shape), generator=gen)))
    for i, x in enumerate(_as_batches(inputs)):
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != input_shape:
            raise ValueError(f"inputs[{i}] has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, input_shape))})")
        cases.append((f"inputs[{i}]", x.float()))

    per_batch: dict[int, float] = {}
    real: list[float] = []
    problems: list[str] = []
    agree = total = 0
    for key, x in cases:
        with torch.inference_mode():
            ref = model(x.to(device=device, dtype=mdtype))
        if isinstance(ref, (tuple, list)):
            ref = ref[0]
        ref_np = ref.detach().float().cpu().numpy().astype(np.float64)
        got = sess.run(None, {in_name: x.numpy().astype(np_dtype)})[0].astype(np.float64)
        if got.shape != ref_np.shape:
            problems.append(f"{key}: onnx output shape {got.shape} != torch {ref_np.shape}")
            diff = float("inf")
        elif not (np.isfinite(got).all() and np.isfinite(ref_np).all()):
            problems.append(f"{key}: non-finite outputs")
            diff = float("inf")
        else:
            diff = float(np.max(np.abs(got - ref_np))) if got.size else 0.0
            if ref_np.ndim == 2 and ref_np.shape[1] > 0:
                agree += int((got.argmax(1) == ref_np.argmax(1)).sum())
                total += ref_np.shape[0]
        if isinstance(key, int):
            per_batch[key] = diff
        else:
            real.append(diff)
        if diff > atol:
            problems.append(f"{key}: max abs diff {diff:.3e} > atol {atol:.1e}")

    all_diffs = list(per_batch.values()) + real
    report = {
        "path": str(path),
        "atol": float(atol),
        "max_abs_diff": max(all_diffs) if all_diffs else 0.0,
        "per_batch": per_batch,
        "inputs": real,
        "top1_agreement": (agree / total) if total else None,
        "provider": sess.get_providers()[0],
        "ok": not problems,
    }
    if problems:
        raise ParityError(
            f"ONNX/torch parity failed for {path}: " + "; ".join(problems) + f" (per batch: {per_batch}, inputs: {real})"
        )
    return report
