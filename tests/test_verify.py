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
                 "config vs weights", "onnx parity", "onnx baseline/model.onnx", "zero-overhead structure"):
        assert status[name] == PASS, name
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
