"""`taslora verify` / taslora_deploy.verify: passes on a fresh export, fails naming the file on damage."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taslora_cli.main import app
from taslora_core.integrity import EXPORT_RECORD
from taslora_core.subnet import sample_subnet
from taslora_core.testing import random_mole, save_mole_workspace
from taslora_deploy.artifacts import REPORT
from taslora_deploy.pipeline import ExportOptions, export
from taslora_deploy.verify import FAIL, PASS, SKIPPED, verify


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    model = random_mole("fmnist", seed=2)
    ws = save_mole_workspace(root, model, name="v")
    sample_subnet(model.space, random.Random(2)).to_json(root / "sub.json")
    result = export(root / "sub.json", ws.mole_dir, workdir=root, options=ExportOptions(onnx=True, overhead=False),
                    log=lambda _: None)
    assert result.ok, result.failures
    return result.out


def test_record_name_is_the_export_report() -> None:
    assert EXPORT_RECORD == REPORT


def test_fresh_export_passes(exported: Path) -> None:
    result = verify(exported, seed=3)
    status = {c.name: c.status for c in result.checks}
    assert result.ok, result.failures
    for name in ("sha256 model.onnx", "sha256 model.safetensors", "sha256 config.json", "sha256 baseline/model.onnx",
                 "config vs weights", "onnx parity", "onnx baseline/model.onnx", "zero-overhead structure",
                 "sha256 certificate.json", "certificate certificate.json", "certificate structure certificate.json",
                 "certificate parity certificate.json"):
        assert status[name] == PASS, name
    detail = {c.name: c.detail for c in result.checks}
    assert detail["certificate certificate.json"].startswith("structure-certified, latency not measured")
    assert status["engine"] in (SKIPPED, PASS)
    res = CliRunner().invoke(app, ["verify", str(exported)])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("rel", ["model.onnx", "model.safetensors", "baseline/model.onnx", "config.json"])
def test_modified_file_fails_naming_it(exported: Path, tmp_path: Path, rel: str) -> None:
    copy = tmp_path / "exp"
    shutil.copytree(exported, copy)
    data = bytearray((copy / rel).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: may well still parse
    (copy / rel).write_bytes(bytes(data))
    result = verify(copy, seed=0)
    failed = {c.name: c.detail for c in result.checks if c.status == FAIL}
    assert not result.ok and str(copy / rel) in failed[f"sha256 {rel}"]
    res = CliRunner().invoke(app, ["verify", str(copy)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and str(copy / rel) in res.stderr


def test_old_export_without_hashes_says_so(exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(exported, copy)
    doc = json.loads((copy / REPORT).read_text())
    doc.pop("hashes")
    (copy / REPORT).write_text(json.dumps(doc))
    result = verify(copy, seed=0)
    rows = {c.name: c for c in result.checks}
    assert result.ok and rows["sha256"].status == SKIPPED and "no hash recorded" in rows["sha256"].detail


def test_structure_mismatch_fails(exported: Path, tmp_path: Path) -> None:
    """A baseline/model.onnx of another subnet (hashes dropped, so only the structure can tell) fails."""
    other_root = tmp_path / "other"
    model = random_mole("fmnist", seed=5)
    ws = save_mole_workspace(other_root, model, name="o")
    space = model.space
    sub = max((sample_subnet(space, random.Random(s)) for s in range(20)), key=lambda s: s.depth)
    sub.to_json(other_root / "sub.json")
    other = export(other_root / "sub.json", ws.mole_dir, workdir=other_root,
                   options=ExportOptions(onnx=True, overhead=False), log=lambda _: None).out
    copy = tmp_path / "mixed"
    shutil.copytree(exported, copy)
    shutil.copy(other / "baseline" / "model.onnx", copy / "baseline" / "model.onnx")
    doc = json.loads((copy / REPORT).read_text())
    doc.pop("hashes")
    (copy / REPORT).write_text(json.dumps(doc))
    rows = {c.name: c for c in verify(copy, seed=0).checks}
    same = json.loads((copy / "config.json").read_text())["subnet"] == json.loads((other / "config.json").read_text())["subnet"]
    assert not same and rows["zero-overhead structure"].status == FAIL
    assert rows["certificate structure certificate.json"].status == FAIL
    assert "baseline/model.onnx has structure digest" in rows["certificate structure certificate.json"].detail


def test_export_into_a_used_folder_certifies_only_what_it_wrote(exported: Path, tmp_path: Path) -> None:
    """A file left in --out by an earlier export (a stale int8 twin) is not in report.json's hashes: it is listed
    under not_written and the checked readers refuse it; the files this export rewrote are certified."""
    from taslora_core.artifact_read import ArtifactError, load_onnx_checked
    from taslora_core.integrity import EXPORT_HASHES_KEY, EXPORT_NOT_WRITTEN_KEY

    out = tmp_path / "used"
    out.mkdir()
    shutil.copy(exported / "model.onnx", out / "model_int8.onnx")
    shutil.copy(exported / "config.json", out / "config.json")
    root = exported.parent.parent
    ckpt = json.loads((exported / REPORT).read_text())["source"]["ckpt"]
    lines: list[str] = []
    for _ in range(2):  # a re-export into the same folder keeps working
        result = export(root / "sub.json", ckpt, workdir=root, out=out,
                        options=ExportOptions(onnx=False, overhead=False), log=lines.append)
        assert result.ok, result.failures
        report = json.loads((out / REPORT).read_text())
        assert {"config.json", "model.safetensors"} <= set(report[EXPORT_HASHES_KEY])
        assert "model_int8.onnx" not in report[EXPORT_HASHES_KEY]
        assert report[EXPORT_NOT_WRITTEN_KEY] == ["model_int8.onnx"]
    assert any("model_int8.onnx" in line and line.startswith("warning:") for line in lines)
    with pytest.raises(ArtifactError, match="not written by the export"):
        load_onnx_checked(out / "model_int8.onnx")


def _without_hashes(folder: Path) -> None:
    """Drop report.json's hashes, so that only the certificate can tell what changed."""
    doc = json.loads((folder / REPORT).read_text())
    doc.pop("hashes")
    (folder / REPORT).write_text(json.dumps(doc))


def test_edited_certificate_fails(exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "edited"
    shutil.copytree(exported, copy)
    _without_hashes(copy)
    doc = json.loads((copy / "certificate.json").read_text())
    doc["verdict"] = "certified"  # a better verdict than the export proved
    (copy / "certificate.json").write_text(json.dumps(doc))
    rows = {c.name: c for c in verify(copy, seed=0).checks}
    assert rows["certificate certificate.json"].status == FAIL and "was edited" in rows["certificate certificate.json"].detail


def test_certificate_of_another_export_fails(exported: Path, tmp_path: Path) -> None:
    """A certificate (digest intact) next to an ONNX file stamped with another certificate: they do not belong."""
    from taslora_deploy.onnx_export import stamp_metadata

    copy = tmp_path / "foreign"
    shutil.copytree(exported, copy)
    _without_hashes(copy)
    stamp_metadata(copy / "model.onnx", {"taslora.certificate.digest": "0" * 64,
                                         "taslora.certificate.verdict": "certified"})
    rows = {c.name: c for c in verify(copy, seed=0).checks}
    assert rows["certificate certificate.json"].status == FAIL
    assert "do not belong together" in rows["certificate certificate.json"].detail


def test_parity_catches_what_structure_cannot(exported: Path, tmp_path: Path) -> None:
    """model.onnx replaced by the no-LoRA graph, stamped with the right certificate: same structure (the
    certificate's structure check passes), but the probe no longer matches the run-time MoLE logits."""
    from taslora_deploy.certificate.document import metadata_props
    from taslora_deploy.onnx_export import stamp_metadata

    copy = tmp_path / "swapped"
    shutil.copytree(exported, copy)
    _without_hashes(copy)
    shutil.copy(copy / "baseline" / "model.onnx", copy / "model.onnx")
    stamp_metadata(copy / "model.onnx", metadata_props(json.loads((copy / "certificate.json").read_text())))
    rows = {c.name: c for c in verify(copy, seed=0).checks}
    assert rows["certificate certificate.json"].status == PASS
    assert rows["certificate structure certificate.json"].status == PASS
    assert rows["certificate parity certificate.json"].status == FAIL
    assert "against the run-time MoLE logits" in rows["certificate parity certificate.json"].detail


def test_verify_reruns_latency_side_by_side(exported: Path, monkeypatch) -> None:
    """`verify --latency` runs both ONNX files here and prints the verdict next to the certified one. The clock is
    faked (real timings at a 0.3 s limit are what the certificate benchmark measures, not a test's business: on
    one machine a short test called identical graphs 4% apart in the first 200 pairs): the runners really run,
    and B/A is 1.0 or 1.1 as the fake says; the verdict, the exit code and the table must follow."""
    from conftest import fake_time_pairs
    from taslora_deploy.certificate import latency as cert_latency

    monkeypatch.setattr(cert_latency, "time_pairs", fake_time_pairs(1.0))
    res = CliRunner().invoke(app, ["verify", str(exported), "--latency", "--time-s", "0.3"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "at export (certificate)" in text and "not measured" in text and "latency here" in text
    assert "batch 1): equivalent (B/A 1.000" in text or "batch 1): equivalent (B/A 0.999" in text
    assert "batch 8): equivalent" in text
    monkeypatch.setattr(cert_latency, "time_pairs", fake_time_pairs(1.1))
    res = CliRunner().invoke(app, ["verify", str(exported), "--latency", "--time-s", "0.3"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "verify failed: latency here" in text
    assert "batch 1): different (B/A 1.09" in text or "batch 1): different (B/A 1.10" in text


def test_check_overhead_on_tensorrt_with_fakes(exported: Path, tmp_path: Path, monkeypatch) -> None:
    """`check-overhead --runtime trt` written to TensorRT's API, run with fakes: the shipped model.plan against a
    no-LoRA engine built from baseline/model.onnx into a temporary folder, timed with CUDA events on the engines'
    streams (fake events: equal GPU time, so equivalent)."""
    from taslora_deploy import timing, trt_engine
    from taslora_deploy.certificate.latency import LatencyTestConfig
    from taslora_deploy.overhead import check_overhead
    from test_timing import _FakeEvent

    import torch

    copy = tmp_path / "trt"
    shutil.copytree(exported, copy)
    _without_hashes(copy)
    (copy / "model.plan").write_bytes(b"folded engine")
    built, gpu, streams = [], [0.0], []

    def fake_build(onnx_path, plan_path, input_shape, **kwargs):
        built.append((Path(onnx_path), tuple(input_shape)))
        Path(plan_path).write_bytes(b"baseline engine")
        return Path(plan_path)

    class FakeTrt:
        device, input_dtype = torch.device("cpu"), torch.float32

        def __init__(self, plan):
            self.stream = f"stream of {Path(plan).read_bytes().decode()}"

        def __call__(self, x):
            gpu[0] += 1e-3
            return x

    monkeypatch.setattr(trt_engine, "build_engine", fake_build)
    monkeypatch.setattr(trt_engine, "TrtRunner", FakeTrt)
    monkeypatch.setattr(timing, "_cuda_timing_event", lambda: _FakeEvent(gpu, streams))
    config = LatencyTestConfig(batch_sizes=(1, 8), warmup_s=0.0, first_pairs=20, time_limit_s=0.5, resamples=50)
    check = check_overhead(copy, config=config, runtime="trt", log=lambda _: None)
    assert built == [(copy / "baseline" / "model.onnx", (1, 28, 28))]
    assert set(streams) == {"stream of baseline engine", "stream of folded engine"}
    lat = check.latency
    assert lat["runtime"] == "trt" and lat["environment"]["device"] == "cuda"
    assert all(r["clock"] == "cuda-events" and r["verdict"] == "equivalent" for r in lat["batches"].values())
    assert check.ok and check.certificate is not None and check.structure["certificate"]["matches"]
