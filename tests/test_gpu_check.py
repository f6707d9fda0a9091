"""benchmarks/gpu_check.sh: its CPU dry run runs every step from the source tree without the package installed
(python -S: no site-packages .pth, so no editable install) and ends with the summary table; the budget cuts steps;
the key numbers and the table come from each step's files."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TRT_OK, requires_fmnist

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["doctor", "gpu_tests", "train_step", "vs_timm", "overhead", "quickstart", "latency_search", "tensorrt"]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check_steps  # noqa: E402


def _no_install_python(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A python that sees torch & co. but not the taslora install: -S skips site (and its .pth files, hence the
    editable install's finder); the venv's site-packages are put on PYTHONPATH by hand."""
    wrapper = tmp_path / "python-no-install"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    env["PYTHON"] = str(wrapper)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return str(wrapper), env


def _run(args: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_without_the_alias_the_cli_package_does_not_import(tmp_path):
    python, env = _no_install_python(tmp_path)
    env["PYTHONPATH"] += os.pathsep + str(ROOT)
    probe = subprocess.run([python, "-c", "import taslora_core; import taslora_cli"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'taslora_cli'" in probe.stderr  # so the alias is what works


def test_a_spent_budget_skips_every_step_and_still_prints_the_table(tmp_path):
    _, env = _no_install_python(tmp_path)
    res = _run(["--dry-run", "--out", str(tmp_path / "r"), "--budget-s", "5"], env, timeout=300)
    assert res.returncode == 0, res.stderr
    steps = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [s["step"] for s in steps] == STEPS and {s["status"] for s in steps} == {"skipped"}
    assert "step            status" in res.stdout and (tmp_path / "r" / "summary.md").is_file()
    assert "taslora_cli:" in (tmp_path / "r" / "launcher.txt").read_text()
    assert (tmp_path / "r" / "report.tar.gz").stat().st_size > 0
    assert _run(["--bogus"], env, timeout=60).returncode == 2


@requires_fmnist
@pytest.mark.slow
def test_dry_run_runs_every_step_from_the_source_tree(tmp_path):
    _, env = _no_install_python(tmp_path)
    report = tmp_path / "report"
    res = _run(["--dry-run", "--out", str(report), "--budget-s", "3000"], env, timeout=3300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (report / "launcher.txt").read_text().strip() == f"taslora_cli: {report / 'pysrc' / 'taslora_cli' / '__init__.py'}"
    steps = {s["step"]: s for s in json.loads((report / "summary.json").read_text())}
    assert list(steps) == STEPS
    ran = STEPS if TRT_OK else STEPS[:-1]
    for name in ran:
        assert steps[name]["status"] == "ok", (name, (report / f"{name}.log").read_text()[-2000:])
        assert (report / f"{name}.log").stat().st_size > 0
    assert "MoLE/plain" in steps["train_step"]["key"] and "router+merge" in steps["train_step"]["key"]
    assert steps["overhead"]["key"].startswith("folded/no-LoRA b1 ")
    assert steps["vs_timm"]["key"].startswith("fmnist eager inference (standalone) b1 "), steps["vs_timm"]["key"]
    assert steps["quickstart"]["key"].startswith("top-1 ") and steps["latency_search"]["key"].startswith("best: ")
    assert "skipped" in steps["gpu_tests"]["key"] or "deselected" in steps["gpu_tests"]["key"]
    if not TRT_OK:
        assert steps["tensorrt"]["status"] == "skipped" and "tensorrt" in steps["tensorrt"]["key"]
    assert "gpu_check summary" in res.stdout and "latency_search" in (report / "summary.md").read_text()


def test_key_numbers_and_summary_from_step_files(tmp_path, capsys):
    r = tmp_path
    from taslora_deploy.doctor import Check, Diagnosis

    (r / "doctor.json").write_text(json.dumps(Diagnosis([Check("CUDA devices", "ok", "cuda:0 NVIDIA H200 (sm 9.0)")]).to_dict()))
    (r / "gpu_tests.log").write_text("....\n12 passed, 3 skipped, 400 deselected in 61.2s\n")
    (r / "train_step.json").write_text(json.dumps({"rows": [{"space": "autoformer-t", "batch": 64, "amp": "bf16",
                                                             "mole_over_plain": 0.62, "router_merge_share": 0.445}]}))
    (r / "overhead").mkdir()
    (r / "overhead" / "bench.json").write_text(json.dumps([
        {"batch": 1, "cuda_graph": False},
        {"batch": 1, "cuda_graph": False, "vs_baseline": {"ratio_of_medians": 1.01, "paired": {"ratio_median": 1.002}}},
        {"batch": 1, "cuda_graph": True, "vs_baseline": {"ratio_of_medians": 0.998, "paired": None}}]))
    (r / "ws").mkdir()
    (r / "ws" / "quickstart-summary.json").write_text(json.dumps({"top1_with_mole": 0.8123, "total_s": 41.2,
                                                                   "latency_ratio_folded_vs_baseline": 1.004}))
    (r / "latency_best.json").write_text(json.dumps({"flops_autoformer": 5.855e6, "latency_ms": 1.234}))
    (r / "vs_timm").mkdir()
    (r / "vs_timm" / "fast-cuda.json").write_text(json.dumps({"spaces": [{"space": "autoformer-t", "rows": [
        {"path": "eager inference, standalone", "batch": 1, "ratio": 1.084},
        {"path": "train step, supernet sliced", "batch": 8, "ratio": 1.12},
        {"path": "train step, supernet + MoLE", "batch": 8, "ratio": 1.3},
        {"path": "train step, standalone", "batch": 8, "ratio": 9.9}]}]}))
    lines = [{"step": "doctor", "status": "ok", "seconds": 3.2, "rc": 0, "reason": "exit 0"},
             {"step": "gpu_tests", "status": "ok", "seconds": 61.0, "rc": 0, "reason": "exit 0"},
             {"step": "train_step", "status": "ok", "seconds": 20, "rc": 0, "reason": "exit 0"},
             {"step": "vs_timm", "status": "ok", "seconds": 40, "rc": 0, "reason": "exit 0"},
             {"step": "overhead", "status": "ok", "seconds": 30, "rc": 0, "reason": "exit 0"},
             {"step": "quickstart", "status": "ok", "seconds": 45, "rc": 0, "reason": "exit 0"},
             {"step": "latency_search", "status": "timeout", "seconds": 75, "rc": 124, "reason": "exit 124"},
             {"step": "tensorrt", "status": "skipped", "seconds": 0, "rc": 0, "reason": "tensorrt is not installed"}]
    (r / "steps.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert gpu_check_steps.main(["summary", str(r)]) == 1  # a timed-out step fails the check
    keys = {s["step"]: s["key"] for s in json.loads((r / "summary.json").read_text())}
    assert keys == {
        "doctor": "CUDA: cuda:0 NVIDIA H200 (sm 9.0)",
        "gpu_tests": "12 passed, 3 skipped, 400 deselected",
        "train_step": "autoformer-t b64 bf16: MoLE/plain 0.62, router+merge 44.5%",
        "vs_timm": "autoformer-t eager inference (standalone) b1 1.08; autoformer-t train (supernet sliced) b8 1.12; "
                   "autoformer-t train (supernet + MoLE) b8 1.30",
        "overhead": "folded/no-LoRA b1 1.002, b1 graph 0.998",
        "quickstart": "top-1 81.23%, total 41 s, folded/no-LoRA 1.004",
        "latency_search": "best: 5.86M FLOPs, 1.234 ms",
        "tensorrt": "tensorrt is not installed",
    }
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["step", "status", "seconds", "key", "number"] and len(table) == 9
    assert "| latency_search | timeout | 75 | best: 5.86M FLOPs, 1.234 ms |" in (r / "summary.md").read_text()
    (r / "latency_best.json").unlink()
    assert gpu_check_steps.key_number("latency_search", r).startswith("(no key number: FileNotFoundError")
