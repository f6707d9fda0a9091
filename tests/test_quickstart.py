"""`taslora quickstart --fast` end to end in a temporary workspace: every artifact and every summary number."""

from __future__ import annotations

import json
import math

import pytest

from conftest import requires_fmnist, run_cli
from taslora_core.subnet import Subnet
from taslora_core.workspace import runs
from taslora_deploy import load_standalone

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("qs")
    result = run_cli(["quickstart", "--fast", "--workdir", workdir, "--seed", "0"])
    return workdir, result


@requires_fmnist
@pytest.mark.slow
def test_quickstart_fast_writes_every_artifact(quickstart):
    workdir, result = quickstart
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "quickstart-summary.json").read_text())
    files = summary["files"]
    for key in ("supernet", "mole", "search", "export"):
        kind = {"supernet": "supernets", "mole": "mole", "search": "searches", "export": "exports"}[key]
        assert [str(r.path) for r in runs(workdir, kind)] == [files[key]]
    export = workdir / "exports" / files["export"].split("/")[-1]
    for name in ("model.safetensors", "config.json", "model.onnx", "baseline/model.onnx", "report.json", "routing.png"):
        assert (export / name).exists(), name
    for key in ("training_curves", "routing_heatmap", "fitness_vs_flops"):
        assert open(files[key], "rb").read(8) == PNG_MAGIC, key
    model = load_standalone(export)
    best = Subnet.load(f"{files['search']}/best.json")
    assert model.subnet == best and summary["subnet"]["depth"] == best.depth


@requires_fmnist
@pytest.mark.slow
def test_quickstart_fast_summary_numbers(quickstart):
    workdir, result = quickstart
    assert result.exit_code == 0, result.output
    s = json.loads((workdir / "quickstart-summary.json").read_text())
    assert 0.1 < s["top1_with_mole"] <= 1 and 0.1 < s["top1_supernet_only"] <= 1  # above chance (10 classes)
    assert s["test_images"] == 10000
    assert s["flops_autoformer"] <= 6e6 and s["params"] > 100_000
    assert s["fold_parity_max_abs"] <= 1e-5 and s["onnx_parity_max_abs"] <= 1e-4
    assert s["same_structure_as_no_lora"] is True
    lo, hi = s["latency_ratio_p10_p90"]
    assert lo <= s["latency_ratio_folded_vs_baseline"] <= hi and math.isfinite(s["unmerged_over_folded_latency"])
    assert {r["batch"] for r in s["onnx_bench"]} == {1, 32} and all(r["p50_ms"] > 0 for r in s["onnx_bench"])
    assert s["tensorrt"].startswith("built") or s["tensorrt"].startswith("skipped: ")
    for label in ("test top-1, searched subnet with MoLE", "fold parity", "latency folded / no-LoRA", "total time"):
        assert label in result.output
    report = json.loads((workdir / "exports" / s["files"]["export"].split("/")[-1] / "report.json").read_text())
    assert report["ok"] is True


@requires_fmnist
@pytest.mark.slow
def test_runs_lists_the_quickstart_workspace(quickstart):
    workdir, _ = quickstart
    result = run_cli(["runs", "--workdir", workdir])
    assert result.exit_code == 0
    for kind in ("supernets", "mole", "searches", "exports"):
        assert kind in result.output
    empty = run_cli(["runs", "--workdir", workdir / "nothing"])
    assert "holds no runs yet" in empty.output
