"""taslora_deploy: fold experts, materialise standalone ViTs, export to ONNX/TensorRT, check and benchmark.

Library verbs (imported on first use, so `import taslora_deploy` stays light):
`export` (-> ExportResult), `export_family` (every member of a pareto.json -> FamilyResult), `check_overhead`
(-> OverheadCheck), `benchmark` (-> BenchResult); precision twins: `convert_fp16`, `quantize_int8`. Three verbs share
their module's name and are imported from it: `taslora_deploy.verify.verify` (an export as shipped ->
VerifyResult), `taslora_deploy.quickstart.quickstart` (every stage on Fashion-MNIST -> its summary) and
`taslora_deploy.predict.predict` (image files through an export with its recorded preprocessing -> PredictResult).

Subpackages: `standalone` (the standalone ViT and its files), `precision` (fp16/int8 twins and their gate),
`certificate` (the zero-overhead certificate: structure, latency equivalence, document, steps, re-checks) and
`bench` (the latency benchmark); the other modules are flat.
"""

from __future__ import annotations

import importlib
from typing import Any

from taslora_deploy.standalone import StandaloneViT, load_standalone, materialize, save_standalone

_VERBS = {
    "export": "taslora_deploy.pipeline",
    "ExportOptions": "taslora_deploy.pipeline",
    "ExportResult": "taslora_deploy.pipeline",
    "check_overhead": "taslora_deploy.overhead",
    "OverheadCheck": "taslora_deploy.overhead",
    "benchmark": "taslora_deploy.bench.verb",
    "BenchResult": "taslora_deploy.bench.verb",
    "export_family": "taslora_deploy.family",
    "FamilyResult": "taslora_deploy.family",
    "convert_fp16": "taslora_deploy.precision.convert",
    "quantize_int8": "taslora_deploy.precision.convert",
}

__all__ = ["StandaloneViT", "load_standalone", "materialize", "save_standalone", *_VERBS]


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        return getattr(importlib.import_module(_VERBS[name]), name)
    raise AttributeError(f"module 'taslora_deploy' has no attribute {name!r}")
