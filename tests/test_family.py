"""`taslora export --family`: every chosen member of a pareto.json exported and certified, plus the family table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import requires_fmnist
from taslora_cli.main import app
from taslora_core.search import Constraints, ParetoFront, ParetoMember, measure, write_pareto
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, smallest_subnet
from taslora_core.testing import random_mole, save_mole_workspace
from taslora_deploy.family import FamilyTiming, export_family, spread_indices
from taslora_deploy.pipeline import ExportOptions

runner = CliRunner()
OBJECTIVES = ("loss", "flops")


def _front(space: SearchSpace, subnets: list[Subnet], ckpt: Path) -> ParetoFront:
    """A front over `subnets` (the bigger, the lower the loss: no member dominates another)."""
    by_cost = sorted(subnets, key=lambda s: measure(space, s)["flops_autoformer"])
    records = [{"subnet": s.to_dict(), "loss": 1.0 - 0.1 * i, "top1": 0.5 + 0.1 * i, **measure(space, s)}
               for i, s in enumerate(by_cost)]
    members = [ParetoMember.from_record(r, OBJECTIVES, "autoformer") for r in records]
    return ParetoFront(OBJECTIVES, space, Constraints(), members, ckpt=str(ckpt), evaluations=len(members))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family")
    model = random_mole("fmnist")
    ws = save_mole_workspace(root, model, name="mole")
    space = model.space
    shallow = [Subnet.from_dict({"embed_dim": e, "depth": 4, "mlp_ratio": [r] * 4, "num_heads": [h] * 4})
               for e, r, h in ((64, 2.0, 2), (80, 3.0, 2), (96, 3.0, 3))]  # small graphs: quick ONNX exports
    pareto = write_pareto(root / "search" / "pareto.json", _front(space, shallow, ws.mole_dir))
    return {"root": root, "mole": ws.mole_dir, "pareto": pareto}


def _invoke(workspace: dict[str, Path], *args: str):
    return runner.invoke(app, ["export", "--workdir", str(workspace["root"]), *args])


@pytest.fixture(scope="module")
def family(workspace) -> dict:
    """Two of the three members (both ends), ONNX and the zero-overhead checks, test top-1, default folder."""
    options = ExportOptions(onnx=True, latency_mode="report", latency_iters=20, latency_warmup_s=0.1,
                            latency_time_s=0.3, latency_batches=(1,))
    lines: list[str] = []
    timing = FamilyTiming("ort-cpu", warmup_s=0.1, min_iters=20, min_time_s=0.1)
    result = export_family(workspace["pareto"], workdir=workspace["root"], members=2, options=options,
                           eval_test=True, timing=timing, log=lines.append)
    assert result.out.parent == workspace["root"] / "exports" and result.out.name.endswith("-family")
    return {"result": result, "out": result.out, "doc": json.loads((result.out / "family.json").read_text())}


def test_spread_indices_keep_both_ends_and_are_even():
    assert spread_indices(5, None) == [0, 1, 2, 3, 4]
    assert spread_indices(5, 9) == [0, 1, 2, 3, 4]
    assert spread_indices(5, 2) == [0, 4]
    assert spread_indices(5, 3) == [0, 2, 4]
    assert spread_indices(10, 4) == [0, 3, 6, 9]
    assert spread_indices(7, 1) == [6]
    for count in range(1, 30):
        for wanted in range(2, count + 1):
            chosen = spread_indices(count, wanted)
            assert len(set(chosen)) == wanted and chosen[0] == 0 and chosen[-1] == count - 1


@requires_fmnist
def test_family_exports_one_verified_folder_per_member(family, workspace):
    result, out, doc = family["result"], family["out"], family["doc"]
    assert result.ok and not result.failed
    assert doc["ok"] is True and doc["failures"] == [] and doc["runtime"] == "ort-cpu"
    members = doc["members"]
    assert [m["index"] for m in members] == [0, 2]  # both ends of the three-member front
    front = json.loads(workspace["pareto"].read_text())["members"]
    for m in members:
        folder = out / m["folder"]
        assert m["folder"].startswith(f"member-{m['index']}-")
        assert m["subnet"] == front[m["index"]]["subnet"] and m["flops_macs"] == front[m["index"]]["flops_macs"]
        assert m["val_loss"] == front[m["index"]]["loss"]
        for name in ("model.safetensors", "config.json", "model.onnx", "baseline/model.onnx", "report.json"):
            assert (folder / name).is_file(), name
        report = json.loads((folder / "report.json").read_text())
        for step in ("parity", "onnx", "zero_overhead_structure", "zero_overhead_latency"):
            assert report[step]["ok"] is True, step
        assert json.loads((folder / "config.json").read_text())["flops_macs"] == m["flops_macs"]
        assert m["status"] == "ok" and m["failed_step"] is None and m["same_structure"] is True
        assert m["fold_parity_max_diff"] <= 1e-5 and m["onnx_parity_max_diff"] <= 1e-4
        assert m["overhead_ratio"] == report["zero_overhead_latency"]["ratio_median"]
        cert = json.loads((folder / "certificate.json").read_text())  # every member carries its certificate
        assert m["certificate"] == cert["verdict"] and cert["structure"]["identical"] and cert["parity"]["ok"]
        assert m["latency_verdict"] == cert["latency"]["verdict"] == report["zero_overhead_latency"]["verdict"]
        assert 0 < m["latency_p50_ms"] <= m["latency_p99_ms"]
        assert 0.0 <= m["top1_test"] <= 1.0
    assert members[0]["flops_autoformer"] < members[1]["flops_autoformer"]


@requires_fmnist
def test_family_table_and_plot(family):
    out, doc = family["out"], family["doc"]
    table = (out / "family.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| member-")]
    assert [r.split("|")[1].strip() for r in rows] == [m["folder"] for m in doc["members"]]
    assert all(r.rstrip(" |").endswith("ok") for r in rows)
    assert f"{100 * doc['members'][0]['top1_test']:.2f}" in rows[0]
    assert (out / "family.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["accuracy"] == "test top-1"


@requires_fmnist
def test_failing_members_are_marked_and_the_rest_go_on(workspace, tmp_path, monkeypatch):
    """Member 0 fails a step of its export (parity), member 1's export raises outright, member 2 is fine."""
    from taslora_deploy import family, pipeline
    from taslora_deploy.fold import ParityError

    front = json.loads(workspace["pareto"].read_text())["members"]
    broken, crashing = (Subnet.from_dict(front[i]["subnet"]) for i in (0, 1))
    real_check, real_export = pipeline.check_parity, family.export

    def check(model, *args, **kwargs):
        if model.subnet == broken:
            raise ParityError("folded model differs by 1.0 (injected)")
        return real_check(model, *args, **kwargs)

    def export(subnet_path, *args, **kwargs):
        if Subnet.load(subnet_path) == crashing:
            raise RuntimeError("disk on fire (injected)")
        return real_export(subnet_path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "check_parity", check)
    monkeypatch.setattr(family, "export", export)
    out = tmp_path / "fam"
    result = _invoke(workspace, "--family", str(workspace["pareto"]), "--out", str(out))
    assert result.exit_code == 1, result.output
    doc = json.loads((out / "family.json").read_text())
    first, middle, last = doc["members"]
    assert first["status"] == "failed" and first["failed_step"] == "parity" and "injected" in first["error"]
    assert first["latency_p50_ms"] > 0  # the steps after the failed one still ran
    assert middle["status"] == "failed" and middle["failed_step"] == "export"
    assert middle["error"] == "RuntimeError: disk on fire (injected)" and middle["latency_p50_ms"] is None
    assert last["status"] == "ok" and last["latency_p50_ms"] > 0  # timed on torch-cpu: no --onnx
    assert doc["runtime"] == "torch-cpu" and doc["ok"] is False and len(doc["failures"]) == 2
    table = (out / "family.md").read_text()
    assert table.count("failed: parity") == 1 and table.count("failed: export") == 1
    assert (out / "family.png").is_file()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {m['folder']}: {m['failed_step']}: {m['error']}" for m in (first, middle)]
    assert first["folder"] in result.stdout and "failed (parity)" in result.stdout  # the printed table


def _one_line_exit_2(result, *names: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for name in names:
        assert name in " ".join(result.stderr.split()), result.stderr


def _export_runs(workspace: dict[str, Path]) -> set[Path]:
    return set((workspace["root"] / "exports").glob("*"))


def _bad_pareto(path: Path, doc: dict | str) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.mark.parametrize("case", ["missing", "not-json", "best-json", "empty-front"])
def test_bad_pareto_file_exits_2_naming_it(workspace, tmp_path, case):
    good = json.loads(workspace["pareto"].read_text())
    path = tmp_path / "pareto.json"
    if case == "not-json":
        _bad_pareto(path, '{"format": "taslora-pareto", "memb')
    elif case == "best-json":
        _bad_pareto(path, {"subnet": good["members"][0]["subnet"], "fitness": 0.3})
    elif case == "empty-front":
        _bad_pareto(path, {**good, "members": []})
    before = _export_runs(workspace)
    result = _invoke(workspace, "--family", str(path), "--onnx")
    _one_line_exit_2(result, str(path))
    assert _export_runs(workspace) == before  # refused before any folder was made


def test_front_of_another_space_exits_2(workspace, tmp_path):
    space = SearchSpace.preset("autoformer-t")
    other = write_pareto(tmp_path / "pareto.json",
                         _front(space, [smallest_subnet(space), largest_subnet(space)], workspace["mole"]))
    result = _invoke(workspace, "--family", str(other), "--out", str(tmp_path / "fam"))
    _one_line_exit_2(result, str(other), "autoformer-t")
    assert not (tmp_path / "fam").exists()


def test_members_below_one_and_mixed_options_exit_2(workspace, tmp_path):
    result = _invoke(workspace, "--family", str(workspace["pareto"]), "--members", "0", "--out", str(tmp_path / "f"))
    _one_line_exit_2(result, str(workspace["pareto"]), "--members")
    result = _invoke(workspace, "--members", "2")
    _one_line_exit_2(result, "--family")
    result = _invoke(workspace, "--family", str(workspace["pareto"]), "--subnet", str(tmp_path / "s.json"))
    _one_line_exit_2(result, "--subnet", "--family")
    assert not (tmp_path / "f").exists()


def test_family_folder_counts_as_finished_but_is_never_the_latest_export(tmp_path):
    """A family folder is finished once its family.json is final and family.md exists (`taslora runs` lists it
    as finished); `latest` exports (what bench and check-overhead take) stay the single exports."""
    from taslora_core.workspace import EXPORT_IN_PROGRESS, is_finished, latest, new_run, runs

    single = new_run(tmp_path, "exports", "export")
    (single / "config.json").write_text("{}")
    (single / "report.json").write_text('{"ok": true}')
    fam = new_run(tmp_path, "exports", "family")
    (fam / "member-0-1M").mkdir()
    (fam / "family.json").write_text(json.dumps({"members": [], EXPORT_IN_PROGRESS: True}))
    assert not is_finished("exports", fam)  # still exporting members
    (fam / "family.json").write_text(json.dumps({"members": []}))
    assert not is_finished("exports", fam)  # family.md not written yet
    (fam / "family.md").write_text("| member |\n")
    assert is_finished("exports", fam)
    assert [r.path for r in runs(tmp_path, "exports")] == [single, fam]
    assert latest(tmp_path, "exports", "") == single
    listed = runner.invoke(app, ["runs", "--workdir", str(tmp_path)])
    assert listed.exit_code == 0 and fam.name in listed.stdout


@requires_fmnist
def test_exported_family_folder_is_finished(family):
    from taslora_core.workspace import EXPORT_IN_PROGRESS, is_finished

    assert is_finished("exports", family["out"]) and EXPORT_IN_PROGRESS not in family["doc"]


@requires_fmnist
def test_specialize_epochs_specialises_every_member_before_its_export(tmp_path):
    """`--specialize-epochs N`: each member gets its own specialize run (N epochs of the run's training split, 4
    steps here), its export folds that run (parity, same structure as the no-LoRA twin) and its test top-1 is the
    exported model's."""
    from test_specialize import _save_workspace

    from taslora_core.data import DataConfig, load_test_batches
    from taslora_core.specialize import read_specialized
    from taslora_deploy.standalone import load_standalone

    found = _save_workspace(tmp_path, random_mole("fmnist", expert_std=0.05))
    space = SearchSpace.preset("fmnist")
    shallow = [Subnet.from_dict({"embed_dim": e, "depth": 4, "mlp_ratio": [r] * 4, "num_heads": [h] * 4})
               for e, r, h in ((64, 2.0, 2), (96, 3.0, 3))]
    pareto = write_pareto(tmp_path / "search" / "pareto.json", _front(space, shallow, found["mole"]))
    options = ExportOptions(onnx=False, latency_mode="off", specialize_epochs=1)
    result = export_family(pareto, workdir=tmp_path, options=options, eval_test=True, log=lambda _line: None,
                           timing=FamilyTiming("torch-cpu", warmup_s=0.05, min_iters=10, min_time_s=0.05))
    assert result.ok, [m.failures for m in result.members]
    runs = sorted((tmp_path / "specialized").iterdir())
    assert len(runs) == 2
    test = load_test_batches(DataConfig.fmnist())
    for m in result.members:
        spec = m.specialized
        assert spec is not None and spec["weights"] == "linear" and spec["steps_run"] == 4 and spec["budget_steps"] == 4
        assert read_specialized(spec["run"]).subnet.to_dict() == m.subnet
        report = json.loads((result.out / m.folder / "report.json").read_text())
        assert report["source"]["specialized"]["run"] == spec["run"]
        assert m.fold_parity_max_diff <= 1e-5 and m.same_structure is True
        model = load_standalone(result.out / m.folder).eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
        assert abs(correct / 10000 - m.top1_test) <= 2e-4  # the exported, specialised model's test top-1
    assert {read_specialized(r).subnet.to_dict()["embed_dim"] for r in runs} == {64, 96}
    notes = [line for line in result.md_path.read_text().splitlines() if line.startswith("- member-")]
    assert len(notes) == 2 and all("specialized (linear, 4 steps" in line for line in notes)
    refused = runner.invoke(app, ["export", "--workdir", str(tmp_path), "--family", str(pareto),
                                  "--specialized", str(runs[0])])
    _one_line_exit_2(refused, "--specialized", "--specialize-epochs")
