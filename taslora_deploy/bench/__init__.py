"""Latency benchmark of exported artifacts (`taslora bench`, the `benchmark` verb -> BenchResult).

- :mod:`~taslora_deploy.bench.verb`: ``bench`` (one artifact, THE timing loop underneath) and the ``benchmark`` verb
  (labelled artifacts, CUDA graphs on/off, ``--compare`` ratios, bench.json + bench.png);
- :mod:`~taslora_deploy.bench.prepare`: an artifact checked before anything is timed, then turned into runners;
- :mod:`~taslora_deploy.bench.describe`: what bench says about an artifact (label, kind, precision, size);
- :mod:`~taslora_deploy.bench.report`: bench.json rows, the results and ratio tables, ``compare_ratios``.

``benchmark``, ``BenchResult`` and ``bench`` are also importable from here (imported on first use, so importing a
submodule stays light).
"""

from __future__ import annotations

import importlib
from typing import Any

_VERB = ("bench", "benchmark", "BenchResult")

__all__ = list(_VERB)


def __getattr__(name: str) -> Any:
    if name in _VERB:
        return getattr(importlib.import_module("taslora_deploy.bench.verb"), name)
    raise AttributeError(f"module 'taslora_deploy.bench' has no attribute {name!r}")
