"""Reduced-precision twins of an fp32 ONNX export and the export steps that make and gate them.

- :mod:`~taslora_deploy.precision.convert`: ``convert_fp16`` (mixed fp16, fp32 islands) and ``quantize_int8``
  (onnxruntime static QDQ), ORT-CPU fp32 fallbacks;
- :mod:`~taslora_deploy.precision.data`: the images of the precision steps (int8 calibration from the run's
  validation split, gate batches from its test split);
- :mod:`~taslora_deploy.precision.gate`: THE accuracy gate, ``--max-top1-drop`` parsing;
- :mod:`~taslora_deploy.precision.steps`: the export's onnx_fp16 / onnx_int8 / tensorrt_fp16 / tensorrt_int8 steps.

``convert_fp16`` and ``quantize_int8`` are also importable from here (imported on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_VERBS = ("convert_fp16", "quantize_int8")

__all__ = list(_VERBS)


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        return getattr(importlib.import_module("taslora_deploy.precision.convert"), name)
    raise AttributeError(f"module 'taslora_deploy.precision' has no attribute {name!r}")
