"""`taslora export` end to end on a MoLE checkpoint with non-trivial experts, plus fold parity on AutoFormer-T."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TRT_REASON, without_trt
from taslora_cli.main import app
from taslora_core import SearchSpace, complexity
from taslora_core.checkpoint import file_sha256, load_supernet
from taslora_core.subnet import AUTOFORMER_SUBNETS, largest_subnet, sample_subnet, smallest_subnet
from taslora_core.testing import random_mole, save_mole_workspace
from taslora_deploy import load_standalone
from taslora_deploy.fold import ParityError, UnmergedMoLEViT, check_parity, fold_subnet
from taslora_deploy.onnx_export import op_histogram

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ws")
    model = random_mole("fmnist")
    ws = save_mole_workspace(root, model, name="mole")
    sub = sample_subnet(model.space, random.Random(0))
    sub.to_json(root / "sub.json")
    return {"root": root, "mole": ws.mole_dir, "supernet": ws.supernet_dir, "subnet": root / "sub.json"}


@pytest.fixture(scope="module")
def exported(workspace) -> dict:
    out = workspace["root"] / "exp"
    result = runner.invoke(app, ["export", "--subnet", str(workspace["subnet"]), "--workdir", str(workspace["root"]),
                                 "--out", str(out), "--onnx", "--trt", "--latency-check", "report",
                                 "--latency-iters", "60", "--latency-time-s", "0.5"])
    return {"out": out, "result": result, "report": json.loads((out / "report.json").read_text())}


@pytest.mark.parametrize("alpha", [1.0, 4.0])
def test_folded_differs_from_baseline_but_matches_runtime_mole(alpha: float):
    model = random_mole("fmnist", seed=1, alpha=alpha)
    sub = sample_subnet(model.space, random.Random(3))
    folded = fold_subnet(model.supernet, sub, model)
    base = fold_subnet(model.supernet, sub).model
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        diff = (folded.model(x) - base(x)).abs().max()
        assert diff > 0.05 * base(x).abs().max()  # the experts really change the model
        report = check_parity(folded.model, {"unmerged": UnmergedMoLEViT(model.supernet, sub, model),
                                             "runtime": lambda t: model(t, sub)}, {"random": x})
    assert max(v for r in report.values() for v in r.values()) <= 1e-5
    routing = folded.routing
    assert routing.shape == (sub.depth, 4, model.num_experts)
    assert torch.allclose(routing.sum(-1), torch.ones(sub.depth, 4))
    with pytest.raises(ParityError, match="differs"):
        check_parity(folded.model, {"baseline": base}, {"random": x})


def test_fold_parity_autoformer_t_at_224():
    model = random_mole("autoformer-t", seed=2)
    sub = sample_subnet(model.space, random.Random(1))
    folded = fold_subnet(model.supernet, sub, model).model
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        check_parity(folded, {"runtime": lambda t: model(t, sub)}, {"random": x}, tolerance=1e-5)
    official = AUTOFORMER_SUBNETS["autoformer-t"]  # outside T's search space: no routing, plain fold only
    plain = fold_subnet(model.supernet, official).model
    with torch.no_grad():
        assert (plain(x) - model.supernet(x, official)).abs().max() <= 1e-5


def test_export_writes_every_artifact_before_tensorrt(exported):
    out, report = exported["out"], exported["report"]
    for name in ("model.safetensors", "config.json", "model.onnx", "baseline/model.onnx", "report.json"):
        assert (out / name).exists(), name
    for step in ("parity", "standalone", "onnx", "onnx_baseline", "zero_overhead_structure", "zero_overhead_latency",
                 "unmerged_vs_folded", "certificate"):
        assert report[step]["ok"] is True, step
    assert "certificate.json" in report["hashes"] and "model.onnx" in report["hashes"]  # covered by the hashes
    assert list(report)[-3:] == ["tensorrt", "failures", "ok"]  # TensorRT runs last
    assert max(v for r in report["parity"]["max_abs_diff"].values() for v in r.values()) <= 1e-5
    assert set(report["parity"]["max_abs_diff"]["supernet_runtime"]) == {"random", "real"}


@without_trt
def test_export_trt_without_tensorrt_fails_last_with_one_line(exported):
    out, result, report = exported["out"], exported["result"], exported["report"]
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: tensorrt: {TRT_REASON}")
    assert len(report["failures"]) == 1 and report["failures"][0].startswith(f"tensorrt: {TRT_REASON}")
    assert report["ok"] is False
    assert report["tensorrt"]["ok"] is False and report["tensorrt"]["type"] == "TensorRTUnavailable"
    assert not (out / "model.plan").exists()


@pytest.mark.trt
def test_export_trt_writes_the_engine(exported):
    out, result, report = exported["out"], exported["result"], exported["report"]
    assert result.exit_code == 0, result.output
    assert report["failures"] == [] and report["ok"] is True
    trt = report["tensorrt"]
    assert trt["ok"] is True and trt["plan"] == str(out / "model.plan") and (out / "model.plan").stat().st_size > 0
    assert trt["compare"]["ok"] is True and trt["compare"]["max_abs_diff"] <= 1e-3


def test_exported_model_loads_in_one_call_and_matches(exported, workspace):
    out = exported["out"]
    model = load_standalone(out)
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["sha256"]["mole.safetensors"] == file_sha256(workspace["mole"] / "mole.safetensors")
    assert len(config["routing"]) == model.subnet.depth and config["lora_folded"] is True
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] not in (1, 2, 7)  # symbolic batch axis
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        want = model(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - want).max() <= 1e-4


def test_zero_overhead_structure_and_latency_report(exported):
    out, report = exported["out"], exported["report"]
    assert op_histogram(out / "model.onnx") == op_histogram(out / "baseline" / "model.onnx")
    s = report["zero_overhead_structure"]
    assert s["equal"] and s["identical"] and s["params_folded"] == s["params_baseline"]
    assert s["artifact"]["digest"] == s["baseline"]["digest"] and s["artifact"]["graph_macs"] > 0
    lat = report["zero_overhead_latency"]
    for key in ("ratio_median", "ratio_p10", "ratio_p90", "median_a_ms", "median_b_ms"):  # older readers' keys
        assert lat[key] > 0
    assert lat["verdict"] in ("equivalent", "inconclusive", "different") and set(lat["batches"]) == {"1", "8"}
    assert lat["within_tolerance"] == (lat["verdict"] == "equivalent") and lat["runtime"] == "ort-cpu"
    unmerged = report["unmerged_vs_folded"]
    assert unmerged["params_unmerged"] > s["params_folded"]  # experts + router are extra at run time


def test_certificate_travels_with_the_onnx_file(exported, workspace):
    from taslora_deploy.certificate.document import read_certificate
    from taslora_deploy.onnx_graph import onnx_metadata

    out, report = exported["out"], exported["report"]
    cert = read_certificate(out / "certificate.json")
    assert cert["artifact"] == "model.onnx" and cert["baseline"] == "baseline/model.onnx" and cert["precision"] == "fp32"
    assert cert["structure"]["identical"] and cert["parity"]["ok"] and cert["parity"]["decided_on"] == ["real"]
    assert cert["parity"]["max_abs_diff"] <= cert["parity"]["tolerance"]["value"] == pytest.approx(1.1e-4)
    assert cert["latency"] == {k: v for k, v in report["zero_overhead_latency"].items() if k in cert["latency"]}
    want = "certified" if cert["latency"]["verdict"] == "equivalent" else "structure-certified, latency inconclusive"
    assert cert["verdict"] == want or cert["latency"]["verdict"] == "different"
    meta = onnx_metadata(out / "model.onnx")
    assert meta["taslora.certificate.digest"] == cert["digest"] and meta["taslora.certificate.verdict"] == cert["verdict"]
    assert json.loads(meta["taslora.subnet"]) == json.loads(workspace["subnet"].read_text())
    assert meta["taslora.params"] == str(json.loads((out / "config.json").read_text())["params"])
    assert json.loads((out / "config.json").read_text())["certificates"]["fp32"]["digest"] == cert["digest"]
    assert report["certificate"]["certificates"]["fp32"]["verdict"] == cert["verdict"]


def test_no_lora_export_equals_plain_subnet(workspace, tmp_path):
    out = tmp_path / "nolora"
    result = runner.invoke(app, ["export", "--subnet", str(workspace["subnet"]), "--workdir", str(workspace["root"]),
                                 "--ckpt", str(workspace["mole"]), "--out", str(out), "--no-lora",
                                 "--latency-time-s", "0.3", "--latency-batches", "2"])
    assert result.exit_code == 0, result.output
    cert = json.loads((out / "certificate.json").read_text())  # without --onnx: the safetensors model is certified
    assert cert["artifact"] == "model.safetensors" and cert["structure"]["identical"]
    assert cert["structure"]["artifact"]["kind"] == "torch" and cert["latency"]["runtime"] == "torch-cpu"
    assert cert["parity"]["max_abs_diff"] <= 1e-5
    model = load_standalone(out)
    supernet = load_supernet(workspace["supernet"]).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - supernet(x, model.subnet)).abs().max() <= 1e-6
    assert json.loads((out / "config.json").read_text())["routing"] is None


def test_check_overhead_and_bench_commands(exported, tmp_path, monkeypatch):
    from conftest import fake_time_pairs
    from taslora_deploy.certificate import latency as cert_latency

    # a fake clock (equal times): at a 0.5 s limit real timings of these identical graphs were once called
    # different (B/A 0.970, the folded side faster) on an Intel Xeon; the verdict's timing is the benchmark's job
    monkeypatch.setattr(cert_latency, "time_pairs", fake_time_pairs(1.0))
    out = exported["out"]
    res = runner.invoke(app, ["check-overhead", str(out), "--iters", "50", "--batch", "4", "--time-s", "0.5"])
    overhead = json.loads((out / "overhead.json").read_text())
    assert overhead["structure"]["equal"] is True and overhead["structure"]["certificate"]["matches"] is True
    # identical graphs: noise can make the verdict inconclusive, never a failure (different would be evidence)
    assert overhead["latency"]["verdict"] != "different" and res.exit_code == 0, res.output
    assert overhead["certificate"]["file"] == "certificate.json" and "at export (certificate)" in res.output
    target = tmp_path / "bench.json"
    res = runner.invoke(app, ["bench", str(out / "model.onnx"), str(out), "--batch-sizes", "1,4",
                              "--min-iters", "10", "--min-time-s", "0.1", "--warmup-s", "0.05", "--json", str(target)])
    assert res.exit_code == 0, res.output
    rows = json.loads(target.read_text())
    assert {r["batch"] for r in rows} == {1, 4} and len(rows) == 4
    for r in rows:
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["throughput_ips"] > 0


def test_bad_inputs_exit_2_with_one_line(workspace, tmp_path):
    res = runner.invoke(app, ["export", "--subnet", str(tmp_path / "none.json"), "--workdir", str(workspace["root"])])
    assert res.exit_code == 2 and "does not exist" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 96, "depth": 4, "mlp_ratio": [2.5] * 4, "num_heads": [2] * 4}))
    res = runner.invoke(app, ["export", "--subnet", str(bad), "--workdir", str(workspace["root"]),
                              "--ckpt", str(workspace["mole"]), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "outside search space" in res.stderr
    res = runner.invoke(app, ["export", "--workdir", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no finished searches run" in res.stderr


def test_console_script_runs_a_real_command():
    """The installed `taslora` entry point (not the module) prints the fmnist space's groups and FLOPs range, and
    rejects an unknown space with exit code 2 and a one-line error."""
    exe = Path(sys.executable).with_name("taslora")
    env = {**os.environ, "COLUMNS": "200"}  # one table row per line
    out = subprocess.run([str(exe), "space", "fmnist"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    space = SearchSpace.preset("fmnist")
    lo, hi = (complexity.flops(space, f(space)) for f in (smallest_subnet, largest_subnet))
    rows = {cells[0]: cells[1] for line in out.stdout.splitlines()
            if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 2}
    assert rows["groups = experts K"] == str(len(space.groups())) == "12"
    assert rows["FLOPs (autoformer)"] == f"{complexity.format_amount(lo)} .. {complexity.format_amount(hi)}"
    bad = subprocess.run([str(exe), "space", "no-such-space"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "'no-such-space' is neither a preset" in bad.stderr


def test_every_library_verb_resolves():
    """`from taslora_deploy import X` works for every verb the package lists (imported on first use)."""
    import importlib
    import pkgutil

    import taslora_deploy

    # every module, subpackages' too (a submodule of the same name would shadow a verb)
    for module in pkgutil.walk_packages(taslora_deploy.__path__, prefix="taslora_deploy."):
        importlib.import_module(module.name)
    for name in taslora_deploy.__all__:
        assert callable(getattr(taslora_deploy, name)), name


def _synthetic_latency(ratio: float, sd: float):
    """A stand-in for the export's latency test: the real sequential test on fake runners (B `ratio` times A,
    log-normal noise `sd`) on a fake clock, so each verdict comes out the same on every run."""
    from unittest import mock

    from taslora_deploy.certificate.latency import latency_certificate
    from test_certificate import _noisy

    def fake(inp, runtime, pair, options, log):
        now = [0.0]
        with mock.patch("time.perf_counter", lambda: now[0]):
            return latency_certificate(lambda b: (_noisy(now, 1e-3, sd, 1), _noisy(now, ratio * 1e-3, sd, 2)),
                                       options.latency_config(), runtime, log=log)

    return fake


@pytest.mark.parametrize("ratio,sd,mode,code,verdict", [
    (1.00, 0.01, "strict", 0, "certified"),
    (1.00, 0.60, "strict", 0, "structure-certified, latency inconclusive"),  # a noisy machine: warn, never fail
    (1.05, 0.01, "strict", 1, "failed"),  # a real 5% slowdown fails the export
    (1.05, 0.01, "report", 0, "failed"),  # ... or is recorded only
    (1.05, 0.01, "off", 0, "structure-certified, latency not measured"),
])
def test_only_evidence_fails_an_export(workspace, tmp_path, monkeypatch, ratio, sd, mode, code, verdict):
    from taslora_deploy.certificate import steps

    monkeypatch.setattr(steps, "_latency", _synthetic_latency(ratio, sd))
    out = tmp_path / "exp"
    res = runner.invoke(app, ["export", "--subnet", str(workspace["subnet"]), "--workdir", str(workspace["root"]),
                              "--out", str(out), "--latency-check", mode, "--latency-time-s", "0.5"])
    assert res.exit_code == code, res.output
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["verdict"] == verdict
    report = json.loads((out / "report.json").read_text())
    text = " ".join(res.output.split())
    if mode == "off":
        assert "zero_overhead_latency" not in report and cert["latency"] is None
        return
    lat = report["zero_overhead_latency"]
    assert lat["batches"]["8"]["pairs"] >= 2 and lat["mode"] == mode  # the numbers are kept, pass or fail
    if code == 1:
        assert (out / "model.safetensors").is_file() and report["failures"][0].startswith(
            "zero_overhead_latency: folded/baseline latency is different")
        assert "error: zero_overhead_latency" in " ".join(res.stderr.split())
    elif "inconclusive" in verdict:
        assert "warning: folded/baseline latency is inconclusive" in text and "taslora check-overhead" in text
        assert report["ok"] is True
    elif verdict == "failed":
        assert "recorded only (--latency-check report)" in text and report["ok"] is True
