"""taslora_deploy: fold experts, materialise standalone ViTs, export to ONNX/TensorRT, check and benchmark.

Library verbs (imported on first use, so `import taslora_deploy` stays light):
`export` (-> ExportResult), `export_family` (every member of a pareto.json -> FamilyResult), `check_overhead`
(-> OverheadCheck), `benchmark` (-> BenchResult); precision twins: `convert_fp16`, `quantize_int8`. Two verbs share
their module's name and are imported from it: `taslora_deploy.verify.verify` (an export as shipped ->
VerifyResult) and `taslora_deploy.quickstart.quickstart` (every stage on Fashion-MNIST -> its summary).
"""

from __future__ import annotations

import importlib
from typing import Any

from taslora_deploy.standalone import StandaloneViT, materialize
from taslora_deploy.standalone_io import load_standalone, save_standalone

_VERBS = {
    "export": "taslora_deploy.pipeline",
    "ExportOptions": "taslora_deploy.pipeline",
    "ExportResult": "taslora_deploy.pipeline",
    "check_overhead": "taslora_deploy.overhead",
    "OverheadCheck": "taslora_deploy.overhead",
    "benchmark": "taslora_deploy.bench",
    "BenchResult": "taslora_deploy.bench",
    "export_family": "taslora_deploy.family",
    "FamilyResult": "taslora_deploy.family",
    "convert_fp16": "taslora_deploy.precision",
    "quantize_int8": "taslora_deploy.precision",
}

__all__ = ["StandaloneViT", "load_standalone", "materialize", "save_standalone", *_VERBS]


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        return getattr(importlib.import_module(_VERBS[name]), name)
    raise AttributeError(f"module 'taslora_deploy' has no attribute {name!r}")
