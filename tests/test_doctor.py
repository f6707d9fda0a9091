"""`taslora doctor`: the lines it prints and its exit code on this machine and, with fakes, on machines with CUDA,
with TensorRT, with both onnxruntime wheels, without onnxruntime and without the data; the quickstart and
`export --trt` point to it."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import requires_fmnist, run_cli
from taslora_deploy import doctor, trt_engine
from taslora_deploy.errors import OnnxRuntimeMissing


@pytest.fixture
def fake_gpu(monkeypatch):
    """One CUDA device as torch reports it (name, capability), without a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))


def _versions(monkeypatch, **installed: str) -> None:
    """Pretend exactly these distributions (name -> version) are installed, for the names the doctor asks about."""
    real = doctor.dist_version
    asked = {"onnxruntime", "onnxruntime-gpu", "polygraphy", *doctor.TENSORRT_DISTS}

    def fake(*names: str) -> str | None:
        if not asked.intersection(names):
            return real(*names)
        return next((installed[n] for n in names if n in installed), None)

    monkeypatch.setattr(doctor, "dist_version", fake)


@requires_fmnist
def test_this_machine_can_run_the_default_path(tmp_path):
    result = doctor.diagnose(tmp_path / "none")
    assert [c.name for c in result.checks][:2] == ["python", "torch"]
    assert result.by_name("Fashion-MNIST").status == "ok" and "60000 train + 10000 test" in result.by_name("Fashion-MNIST").detail
    assert result.by_name("onnxruntime").status == "ok" and "CPUExecutionProvider" in result.by_name("onnxruntime").detail
    assert result.by_name("workspace").detail.endswith("none yet")
    targets = result.by_name("latency targets").detail
    assert "usable here: ort-cpu, torch-cpu" in targets or torch.cuda.is_available()
    assert result.ok
    res = run_cli(["doctor", "--workdir", tmp_path])
    assert res.exit_code == 0, res.output
    for name in ("python", "torch", "CUDA devices", "onnxruntime", "TensorRT", "Fashion-MNIST", "workspace",
                 "latency targets", "the default path can run here"):
        assert name in res.output
    res = run_cli(["doctor", "--workdir", tmp_path, "--json"])  # what benchmarks/gpu_check.sh reads
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and doc["ok"] is True
    assert [c["name"] for c in doc["checks"]] == [c.name for c in result.checks]
    assert {"name", "status", "detail", "fix"} == set(doc["checks"][0])


@requires_fmnist
def test_cuda_present(fake_gpu, monkeypatch, tmp_path):
    _versions(monkeypatch, onnxruntime="1.32.0")
    result = doctor.diagnose(tmp_path)
    assert result.by_name("CUDA devices").status == "ok"
    assert result.by_name("CUDA devices").detail == "cuda:0 NVIDIA H200 (sm 9.0)"
    gpu_ort = result.by_name("onnxruntime on CUDA")  # the CPU wheel on a GPU machine: said, with the fix
    assert gpu_ort.status == "missing" and "taslora[gpu]" in gpu_ort.fix
    assert "torch-cuda" in result.by_name("latency targets").detail.split("; not here")[0]
    assert result.ok


@requires_fmnist
def test_tensorrt_present(fake_gpu, monkeypatch, tmp_path):
    monkeypatch.setattr(trt_engine, "tensorrt_status", lambda: (True, "tensorrt 10.13.0 on NVIDIA H200"))
    _versions(monkeypatch, onnxruntime="1.32.0", tensorrt="10.13.0")
    result = doctor.diagnose(tmp_path)
    assert result.by_name("TensorRT").status == "ok" and result.by_name("TensorRT").detail.startswith("tensorrt 10.13.0")
    assert result.by_name("Polygraphy").status == "missing"  # TensorRT without its debugging tool: said
    assert result.by_name("latency targets").detail.startswith("usable here: ort-cpu, torch-cpu, torch-cuda, trt")
    _versions(monkeypatch, onnxruntime="1.32.0", tensorrt="10.13.0", polygraphy="0.49.20")
    assert doctor.diagnose(tmp_path).by_name("Polygraphy").status == "ok"


def test_tensorrt_missing_is_optional_and_points_to_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(trt_engine, "tensorrt_status", lambda: (False, trt_engine._NOT_INSTALLED))
    trt = next(c for c in doctor._tensorrt() if c.name == "TensorRT")
    assert trt.status == "missing" and trt.detail == "tensorrt is not installed" and "pypi.nvidia.com" in trt.fix
    with pytest.raises(trt_engine.TensorRTUnavailable, match="`taslora doctor` shows what this machine has"):
        trt_engine.require_tensorrt()  # what `export --trt` and `bench model.plan` report


@requires_fmnist
def test_both_onnxruntime_wheels_fail(monkeypatch, tmp_path):
    _versions(monkeypatch, onnxruntime="1.32.0", **{"onnxruntime-gpu": "1.32.0"})
    result = doctor.diagnose(tmp_path)
    ort = result.by_name("onnxruntime")
    assert ort.status == "fail" and "both onnxruntime 1.32.0 and onnxruntime-gpu 1.32.0" in ort.detail
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in ort.fix and not result.ok
    res = run_cli(["doctor", "--workdir", tmp_path])
    assert res.exit_code == 1 and "the default path cannot run here: fix onnxruntime" in res.output


def test_onnxruntime_missing_fails(monkeypatch):
    def missing():
        raise OnnxRuntimeMissing("onnxruntime is not installed")

    _versions(monkeypatch)
    monkeypatch.setattr(doctor, "require_onnxruntime", missing)
    (ort,) = doctor._onnxruntime()
    assert ort.status == "fail" and "pip install 'taslora[cpu]'" in ort.fix


def test_data_missing_fails_with_the_install_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TASLORA_FMNIST_DIR", str(tmp_path / "empty"))
    result = doctor.diagnose(tmp_path)
    data = result.by_name("Fashion-MNIST")
    assert data.status == "fail" and "Fashion-MNIST file not found" in data.detail and str(tmp_path / "empty") in data.detail
    assert "apt-get install dataset-fashion-mnist" in data.fix and "TASLORA_FMNIST_DIR" in data.fix
    res = run_cli(["doctor", "--workdir", tmp_path])
    assert res.exit_code == 1 and "fix Fashion-MNIST" in res.output


def test_workspace_lists_the_latest_run_of_each_kind(tmp_path):
    for name in ("20260101-000000-supernet", "20260102-000000-supernet"):
        run = tmp_path / "supernets" / name
        run.mkdir(parents=True)
        (run / "supernet.safetensors").write_bytes(b"x")
        (run / "space.json").write_text("{}")
    (tmp_path / "mole" / "20260103-000000-mole").mkdir(parents=True)  # unfinished: not counted
    (ws,) = doctor._workspace(tmp_path)
    assert ws.detail == f"{tmp_path}: supernets 2 (latest 20260102-000000-supernet); mole 0; searches 0; specialized 0; exports 0"


def test_quickstart_without_data_points_to_the_doctor(monkeypatch, tmp_path):
    monkeypatch.setenv("TASLORA_FMNIST_DIR", str(tmp_path / "empty"))
    res = run_cli(["quickstart", "--fast", "--workdir", tmp_path / "ws"])
    assert res.exit_code == 2
    assert "Fashion-MNIST file not found" in res.stderr and "`taslora doctor` shows what this machine has" in res.stderr
