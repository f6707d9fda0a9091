"""`taslora quickstart --fast` end to end in a temporary workspace: every artifact and every summary number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TRT_REASON, requires_fmnist, run_cli, without_trt
from taslora_core.subnet import Subnet
from taslora_core.workspace import runs
from taslora_deploy import load_standalone

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = [requires_fmnist, pytest.mark.slow]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("qs")
    result = run_cli(["quickstart", "--fast", "--workdir", workdir, "--seed", "0"])
    return workdir, result


@pytest.fixture(scope="module")
def summary(quickstart) -> dict:
    """quickstart-summary.json of the finished run."""
    workdir, result = quickstart
    assert result.exit_code == 0, result.output
    return json.loads((workdir / "quickstart-summary.json").read_text())


def _export_report(summary: dict) -> dict:
    return json.loads((Path(summary["files"]["export"]) / "report.json").read_text())


def test_quickstart_fast_writes_every_artifact(quickstart, summary):
    workdir, _ = quickstart
    files = summary["files"]
    for key in ("supernet", "mole", "search", "specialize", "export"):
        kind = {"supernet": "supernets", "mole": "mole", "search": "searches", "specialize": "specialized",
                "export": "exports"}[key]
        assert [str(r.path) for r in runs(workdir, kind)] == [files[key]]
    export = Path(files["export"])
    for name in ("model.safetensors", "config.json", "model.onnx", "baseline/model.onnx", "report.json", "routing.png"):
        assert (export / name).exists(), name
    for key in ("training_curves", "routing_heatmap", "fitness_vs_flops"):
        assert open(files[key], "rb").read(8) == PNG_MAGIC, key
    model = load_standalone(export)
    best = Subnet.load(f"{files['search']}/best.json")
    assert model.subnet == best and summary["subnet"]["depth"] == best.depth


def test_quickstart_fast_summary_numbers(quickstart, summary):
    s, output = summary, quickstart[1].output
    assert 0.1 < s["top1_with_mole"] <= 1 and 0.1 < s["top1_supernet_only"] <= 1  # above chance (10 classes)
    assert s["test_images"] == 10000
    assert s["flops_autoformer"] <= 6e6 and s["params"] > 100_000
    assert s["fold_parity_max_abs"] <= 1e-5 and s["onnx_parity_max_abs"] <= 1e-4
    assert s["same_structure_as_no_lora"] is True
    assert {r["batch"] for r in s["onnx_bench"]} == {1, 32} and all(r["p50_ms"] > 0 for r in s["onnx_bench"])
    for label in ("test top-1, same subnet with MoLE", "specialize gain over the supernet", "fold parity",
                  "latency folded / no-LoRA", "total time"):
        assert label in output
    report = _export_report(s)
    assert report["ok"] is True
    # the summary's latency numbers are the export's measurement, not numbers of its own
    latency = report["zero_overhead_latency"]
    assert s["latency_ratio_folded_vs_baseline"] == latency["ratio_median"]
    assert s["latency_ratio_p10_p90"] == [latency["ratio_p10"], latency["ratio_p90"]]
    assert s["latency_within_3pct"] == latency["within_tolerance"]
    # a specialised export has no run-time-LoRA twin: the step is skipped with its reason, the summary says None
    assert s["unmerged_over_folded_latency"] == report["unmerged_vs_folded"].get("ratio_median")
    assert "ratio_median" in report["unmerged_vs_folded"] or report["unmerged_vs_folded"].get("skipped")
    assert s["fold_parity_max_abs"] == max(v for ref in report["parity"]["max_abs_diff"].values() for v in ref.values())


@without_trt
def test_quickstart_without_tensorrt_says_why_and_builds_no_engine(summary):
    assert summary["tensorrt"] == f"skipped: {TRT_REASON}"
    assert "tensorrt" not in _export_report(summary) and not (Path(summary["files"]["export"]) / "model.plan").exists()


@pytest.mark.trt
def test_quickstart_with_tensorrt_builds_the_engine(summary):
    assert summary["tensorrt"] == "built"
    assert _export_report(summary)["tensorrt"]["ok"] is True
    assert (Path(summary["files"]["export"]) / "model.plan").stat().st_size > 0


def test_runs_lists_the_quickstart_workspace(quickstart):
    workdir, _ = quickstart
    result = run_cli(["runs", "--workdir", workdir])
    assert result.exit_code == 0
    for kind in ("supernets", "mole", "searches", "exports"):
        assert kind in result.output
    empty = run_cli(["runs", "--workdir", workdir / "nothing"])
    assert "holds no runs yet" in empty.output


def test_quickstart_rejects_a_folder_that_is_no_supernet(tmp_path):
    """A bad --supernet ends in one line and exit 2, before anything is written."""
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    workdir = tmp_path / "ws"
    result = run_cli(["quickstart", "--supernet", not_a_run, "--workdir", workdir])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "not a taslora supernet" in result.stderr
    assert not workdir.exists()


@requires_fmnist
def test_quickstart_summary_pairs_the_test_images(summary):
    """The with/without-experts gain is the paired difference of the two top-1 numbers, with an interval around it."""
    gain = summary["top1_gain_with_mole"]
    assert gain["count"] == summary["test_images"] == 10000
    assert gain["mean"] == pytest.approx(summary["top1_with_mole"] - summary["top1_supernet_only"], abs=1e-9)
    low, high = gain["ci95"]
    assert low <= gain["mean"] <= high and high - low < 0.05


def test_quickstart_specializes_what_it_exports(summary):
    """The specialised subnet's test gain is paired like MoLE's, and the export folds that specialize run."""
    spec = summary["top1_gain_specialized"]
    assert spec["count"] == summary["test_images"]
    assert spec["mean"] == pytest.approx(summary["top1_specialized"] - summary["top1_supernet_only"], abs=1e-9)
    over = summary["top1_gain_specialized_over_mole"]
    assert over["mean"] == pytest.approx(summary["top1_specialized"] - summary["top1_with_mole"], abs=1e-9)
    report = _export_report(summary)
    assert Path(report["source"]["specialized"]["run"]).resolve() == Path(summary["files"]["specialize"]).resolve()
    assert summary["specialize"]["steps_run"] >= 1
