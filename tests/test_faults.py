"""Fault injection: every artifact, damaged four ways, under every command that reads it.

One small workspace per module (a supernet run and a MoLE run with recorded hashes, a search's best.json, an
export folder with ONNX files, an unfinished run to resume) plus a second one whose files serve as "another
run's file of the same name". Each case damages one file in place (truncate / empty / flip bytes in the middle /
replace), runs the command in-process, restores the file, and asserts: exit 2, exactly one line on stderr that
names the file, no traceback, and no other file of the workspace created or changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import cli_subprocess
from taslora_cli.main import app
from taslora_core.atomic import atomic_write_json
from taslora_core.integrity import RUN_FILES_RECORDED, SHA256_KEY, hashes_of, write_hashed
from taslora_core.mole_io import read_mole_config, save_mole
from taslora_core.search import Constraints, ParetoFront, ParetoMember, measure, write_pareto
from taslora_core.subnet import largest_subnet, sample_subnet, smallest_subnet
from taslora_core.testing import random_mole, save_mole_workspace
from taslora_core.train.loop import STATE_FORMAT, TRAIN_STATE, TRAIN_STATE_RECORD
from taslora_core.train.run_files import TRAIN_CONFIG
from taslora_core.workspace import new_run
from taslora_deploy.pipeline import ExportOptions, export

runner = CliRunner()


def _build(root: Path, seed: int, onnx: bool = True) -> dict[str, Path]:
    """A workspace with every artifact kind (the export's ONNX files only with `onnx`); returns the named paths."""
    model = random_mole("fmnist", seed=seed)
    ws = save_mole_workspace(root, model, name="run")
    # as a training run: train_config.json and summary.json written before mole.json, which records their sha256
    atomic_write_json(ws.mole_dir / "summary.json", {"kind": "mole", "mean_improvement": 0.01 * seed})
    atomic_write_json(ws.mole_dir / TRAIN_CONFIG, {"kind": "mole", "config": {"seed": seed}})
    meta = read_mole_config(ws.mole_dir)
    save_mole(ws.mole_dir, model, {k: v for k, v in meta.items() if k not in ("format", "config", "space", SHA256_KEY)})
    sub = sample_subnet(model.space, random.Random(seed))
    sub.to_json(root / "sub.json")
    search = new_run(root, "searches", "search")  # as a search: best.json, pareto.json, then summary.json
    atomic_write_json(search / "best.json", {"subnet": sub.to_dict(), "ckpt": str(ws.mole_dir)})
    ends = (smallest_subnet(model.space), largest_subnet(model.space))
    members = [ParetoMember.from_record({"subnet": s.to_dict(), "loss": 1.0 - 0.1 * i - 0.01 * seed,
                                         **measure(model.space, s)}, ("loss", "flops"), "autoformer")
               for i, s in enumerate(ends)]
    write_pareto(search / "pareto.json", ParetoFront(("loss", "flops"), model.space, Constraints(), members,
                                                     ckpt=str(ws.mole_dir), evaluations=2))
    atomic_write_json(search / "summary.json", {SHA256_KEY: hashes_of(search, RUN_FILES_RECORDED)})
    exp = export(root / "sub.json", ws.mole_dir, workdir=root, options=ExportOptions(onnx=onnx, overhead=False),
                 log=lambda _: None)
    assert exp.ok, exp.failures
    killed = new_run(root, "mole", "killed")  # an unfinished run with a training state (and its record), for --resume
    atomic_write_json(killed / TRAIN_CONFIG, {"kind": "mole", "config": {}, "supernet_dir": str(ws.supernet_dir),
                                              "supernet_sha256": "0" * 64})
    state = {"format": STATE_FORMAT, "global_step": 3, "model": {"w": torch.arange(4000.0) + seed}}
    write_hashed(killed / TRAIN_STATE, lambda tmp: torch.save(state, tmp), killed / TRAIN_STATE_RECORD,
                 also=[killed / TRAIN_CONFIG])
    return {"root": root, "mole": ws.mole_dir, "supernet": ws.supernet_dir, "search": search, "export": exp.out,
            "killed": killed, "sub": root / "sub.json"}


@pytest.fixture(scope="module")
def spaces(tmp_path_factory) -> tuple[dict[str, Path], dict[str, Path]]:
    return _build(tmp_path_factory.mktemp("faults"), 0), _build(tmp_path_factory.mktemp("other"), 1, onnx=False)


# "another run's file of the same name": the other workspace's, except for the ONNX files, which the other
# export skips (time): each is replaced by its twin of the same export (model.onnx <-> baseline/model.onnx).
ONNX_TWIN = {"model.onnx": "baseline/model.onnx", "baseline/model.onnx": "model.onnx"}


# artifact -> (run key, path inside the run, commands that read it, damages that apply)
ALL = ("truncate", "empty", "flip", "replace")
ARTIFACTS: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "mole.safetensors": ("mole", "mole.safetensors", ("eval", "search", "export"), ALL),
    "mole.json": ("mole", "mole.json", ("eval", "export"), ALL),
    "supernet.safetensors": ("supernet", "supernet.safetensors", ("eval", "search"), ALL),
    "space.json": ("supernet", "space.json", ("eval",), ALL),
    "split.json": ("mole", "split.json", ("eval",), ("truncate", "empty", "flip")),  # every run carves the same split
    "best.json": ("search", "best.json", ("export-latest",), ALL),
    "pareto.json": ("search", "pareto.json", ("export-family",), ALL),
    "model.safetensors": ("export", "model.safetensors", ("bench-dir", "verify"), ALL),
    "config.json": ("export", "config.json", ("bench-dir", "verify"), ALL),
    "model.onnx": ("export", "model.onnx", ("bench-onnx", "check-overhead", "verify"), ALL),
    "baseline/model.onnx": ("export", "baseline/model.onnx", ("check-overhead", "verify"), ALL),
    "report.json": ("export", "report.json", ("verify",), ALL),
    "train_state.pt": ("killed", TRAIN_STATE, ("train-resume",), ALL),
    "train_state.sha256.json": ("killed", TRAIN_STATE_RECORD, ("train-resume",), ("truncate", "empty")),
    "train_config.json": ("killed", TRAIN_CONFIG, ("train-resume",), ALL),
    "summary.json": ("mole", "summary.json", ("runs",), ALL),
}
CASES = [(art, cmd, dmg) for art, (_, _, cmds, dmgs) in ARTIFACTS.items() for cmd in cmds for dmg in dmgs]


def _argv(cmd: str, ws: dict[str, Path]) -> list[str]:
    root = str(ws["root"])
    return {
        "eval": ["eval", "--workdir", root, "--ckpt", str(ws["mole"]), "--subnet", str(ws["sub"]), "--val-subset", "8"],
        "search": ["search", "--workdir", root, "--ckpt", str(ws["mole"]), "--flops", "100M", "--population", "2",
                   "--iterations", "1", "--val-subset", "8"],
        "export": ["export", "--workdir", root, "--ckpt", str(ws["mole"]), "--subnet", str(ws["sub"])],
        "export-latest": ["export", "--workdir", root],
        "export-family": ["export", "--workdir", root, "--family", str(ws["search"] / "pareto.json"),
                          "--out", str(ws["root"] / "family")],
        "bench-dir": ["bench", str(ws["export"]), "--min-iters", "1", "--no-plot"],
        "bench-onnx": ["bench", str(ws["export"] / "model.onnx"), "--min-iters", "1", "--no-plot"],
        "check-overhead": ["check-overhead", str(ws["export"])],
        "verify": ["verify", str(ws["export"])],
        "train-resume": ["train", "--workdir", root, "--resume", str(ws["killed"])],
        "runs": ["runs", "--workdir", root],
    }[cmd]


def _damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flip":
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 16]) + data[mid + 16:])
    else:
        replacement = other.read_bytes()
        assert replacement != data, f"{other} is the same file: replacing with it is no damage"
        path.write_bytes(replacement)


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("artifact,command,damage", CASES, ids=[f"{a}-{c}-{d}" for a, c, d in CASES])
def test_damaged_artifact_is_one_line_exit_2(spaces, artifact: str, command: str, damage: str) -> None:
    ws, other = spaces
    key, rel, _, _ = ARTIFACTS[artifact]
    path = ws[key] / rel
    original = path.read_bytes()
    _damage(path, damage, ws[key] / ONNX_TWIN[rel] if rel in ONNX_TWIN else other[key] / rel)
    before = _tree(ws["root"])
    try:
        result = runner.invoke(app, _argv(command, ws))
        after = _tree(ws["root"])
    finally:
        path.write_bytes(original)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, repr(result.exception))
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1 and str(path) in lines[0], result.stderr
    assert after == before, "the failed command changed the workspace"


def test_modified_file_loads_with_the_override(spaces) -> None:
    """A flipped-but-parsable safetensors file is refused, and loads (with a warning) under --allow-modified."""
    ws, _ = spaces
    path = ws["export"] / "model.safetensors"
    original = path.read_bytes()
    data = bytearray(original)
    data[-8] ^= 0x01  # the last tensor's bytes: the file still parses
    path.write_bytes(bytes(data))
    try:
        refused = runner.invoke(app, ["bench", str(ws["export"]), "--min-iters", "1", "--no-plot"])
        allowed = runner.invoke(app, ["--allow-modified", "bench", str(ws["export"]), "--min-iters", "1", "--no-plot"])
    finally:
        path.write_bytes(original)
    assert refused.exit_code == 2 and "sha256" in refused.stderr and "--allow-modified" in refused.stderr
    assert allowed.exit_code == 0, allowed.output
    assert "warning:" in allowed.stderr and str(path) in allowed.stderr
    from taslora_core.integrity import allow_modified_flag

    assert not allow_modified_flag()  # the override ends with its command: later calls in this process check again


def test_console_script_prints_no_traceback_and_debug_does(spaces) -> None:
    """The real console script: one line without --debug, the traceback with it."""
    ws, _ = spaces
    path = ws["mole"] / "mole.safetensors"
    original = path.read_bytes()
    path.write_bytes(original[:1000])
    try:
        env = {**os.environ, "TASLORA_DEBUG": ""}
        plain = subprocess.run(cli_subprocess(["eval", "--ckpt", str(ws["mole"]), "--subnet", str(ws["sub"])]),
                               capture_output=True, text=True, env=env, timeout=120)
        debug = subprocess.run(cli_subprocess(["--debug", "eval", "--ckpt", str(ws["mole"]), "--subnet", str(ws["sub"])]),
                               capture_output=True, text=True, env=env, timeout=120)
    finally:
        path.write_bytes(original)
    assert plain.returncode == 2 and "Traceback" not in plain.stdout + plain.stderr
    assert plain.stderr.strip().count("\n") == 0 and str(path) in plain.stderr
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_concurrent_runs_get_distinct_folders(tmp_path) -> None:
    """Two commands creating a run in the same second never share a folder (exclusive mkdir + suffix)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: new_run(tmp_path, "mole", "same"), range(16)))
    assert len(set(made)) == 16


def test_latest_never_returns_a_run_still_being_written(spaces, tmp_path) -> None:
    """A MoLE run whose weights exist but whose record (written last) does not is not 'the latest run'."""
    from taslora_core.workspace import latest

    ws, _ = spaces
    newer = new_run(ws["root"], "mole", "writing")
    try:
        (newer / "mole.safetensors").write_bytes((ws["mole"] / "mole.safetensors").read_bytes())
        assert latest(ws["root"], "mole", "") == ws["mole"]
    finally:
        (newer / "mole.safetensors").unlink()
        newer.rmdir()


def test_disk_full_keeps_the_previous_checkpoint(spaces, monkeypatch) -> None:
    """ENOSPC in the middle of a checkpoint write: one-line error naming the file, previous file intact."""
    import errno

    from taslora_cli.app import handle_errors
    from taslora_core.checkpoint import load_supernet, save_supernet

    ws, _ = spaces
    sdir = ws["supernet"]
    before = _tree(sdir)
    model = load_supernet(sdir)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    lines: list[str] = []
    monkeypatch.setattr("taslora_cli.app.fail", lambda msg, code=2: lines.append(msg) or SystemExit(code))
    with pytest.raises(SystemExit):
        handle_errors(lambda: save_supernet(sdir, model))()
    assert _tree(sdir) == before
    assert len(lines) == 1 and "disk full while writing" in lines[0] and str(sdir / "supernet.safetensors") in lines[0]


def test_moved_workspace_keeps_loading(spaces, tmp_path) -> None:
    """A workspace moved elsewhere keeps its MoLE -> supernet link: the recorded absolute path is gone, the
    same layout (<workspace>/supernets/<name>) with the recorded sha256 is used."""
    import shutil

    from taslora_core.run_io import load_checkpoint
    from taslora_core.state_check import CheckpointError

    ws, _ = spaces
    moved = tmp_path / "moved"
    shutil.copytree(ws["root"] / "mole", moved / "mole")
    shutil.copytree(ws["root"] / "supernets", moved / "supernets")
    mole = moved / "mole" / ws["mole"].name
    real = ws["supernet"]
    hidden = real.with_name(real.name + ".away")
    real.rename(hidden)  # the recorded absolute path no longer exists
    try:
        loaded = load_checkpoint(mole)
    finally:
        hidden.rename(real)
    assert loaded.kind == "mole"
    shutil.rmtree(moved / "supernets")
    real.rename(hidden)
    try:
        with pytest.raises(CheckpointError, match="missing"):
            load_checkpoint(mole)
    finally:
        hidden.rename(real)


def test_record_names_match_their_writers() -> None:
    from taslora_core.checkpoint import SPACE_JSON
    from taslora_core.integrity import RUN_RECORDS
    from taslora_core.mole_io import MOLE_CONFIG
    from taslora_core.search.pareto_file import PARETO_JSON
    from taslora_core.train.run_files import SPLIT_FILE
    from taslora_core.workspace import BEST_JSON, SUMMARY_JSON

    assert RUN_RECORDS == (SPACE_JSON, MOLE_CONFIG, SUMMARY_JSON, TRAIN_STATE_RECORD)
    assert set(RUN_FILES_RECORDED) == {SPLIT_FILE, TRAIN_CONFIG, SUMMARY_JSON, BEST_JSON, PARETO_JSON}


def test_state_record_written_before_the_state_keeps_a_kill_in_between_resumable(tmp_path, monkeypatch) -> None:
    """write_hashed records the new hash before the rename and keeps the hashes the file on disk may have: a kill
    between the two (the old state with the new record) still loads, also after a second kill in the same
    window; a completed write clears "previous"; a foreign state is refused."""
    import taslora_core.atomic as atomic
    from taslora_core.integrity import ALLOW_MODIFIED_ENV, IntegrityError, PREVIOUS_KEY, check_hashed

    monkeypatch.delenv(ALLOW_MODIFIED_ENV, raising=False)
    path, record = tmp_path / TRAIN_STATE, tmp_path / TRAIN_STATE_RECORD

    def check() -> None:
        check_hashed(path, json.loads(record.read_text()), record, "")

    real_replace = atomic.os.replace

    def replace_unless_state(src, dst) -> None:
        if Path(dst) == path:  # killed right before the state's rename; its record was already renamed into place
            raise KeyboardInterrupt
        real_replace(src, dst)

    def killed_at_rename(content: bytes) -> None:
        with monkeypatch.context() as m:
            m.setattr(atomic.os, "replace", replace_unless_state)
            with pytest.raises(KeyboardInterrupt):
                write_hashed(path, lambda tmp: tmp.write_bytes(content), record)

    write_hashed(path, lambda tmp: tmp.write_bytes(b"first"), record)
    write_hashed(path, lambda tmp: tmp.write_bytes(b"second"), record)
    check()
    assert json.loads(record.read_text())[PREVIOUS_KEY] == {}  # the rename happened: nothing else can be on disk
    killed_at_rename(b"third")
    assert path.read_bytes() == b"second" and json.loads(record.read_text())[PREVIOUS_KEY]
    check()  # the record names "third", the disk holds "second"
    killed_at_rename(b"fourth")  # killed again in the same window: "second" must still be accepted
    check()
    write_hashed(path, lambda tmp: tmp.write_bytes(b"fifth"), record)
    check()
    path.write_bytes(b"second")  # an older state of this run is no longer what the record names
    with pytest.raises(IntegrityError, match=str(path)):
        check()


@pytest.mark.parametrize("damage", ALL)
def test_damaged_latency_cache_is_ignored_with_one_warning(tmp_path, capsys, damage: str) -> None:
    """The search latency cache only saves time: a damaged, foreign or edited one is ignored with one warning
    line naming it, its subnets are measured again, and the next save rewrites it."""
    from taslora_core.space import SearchSpace
    from taslora_core.supernet import Supernet
    from taslora_deploy.latency_lookup import LatencyTable

    supernet = Supernet(SearchSpace.preset("fmnist"))
    path, other = tmp_path / "cache.json", tmp_path / "other.json"
    for target, where, ms in (("torch-cpu", path, 1.5), ("ort-cpu", other, 2.5)):
        table = LatencyTable(supernet, "torch-cpu", cache_path=where)
        table.target, table.table = target, {'[1, 2]': ms, '[3, 4]': 10.0 + ms}
        table.save()
    assert LatencyTable(supernet, "torch-cpu", cache_path=path).table == {'[1, 2]': 1.5, '[3, 4]': 11.5}
    if damage == "flip":  # an edited number still parses: caught by the sha256 of the table
        path.write_text(path.read_text().replace("11.5", "17.5"))
    else:
        _damage(path, damage, other)
    capsys.readouterr()
    assert LatencyTable(supernet, "torch-cpu", cache_path=path).table == {}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and str(path) in err[0], err


@pytest.mark.parametrize("name", ["search.json", "state.json"])
def test_damaged_search_state_is_one_line_on_resume(tmp_path, name: str) -> None:
    """`search --resume` of a search whose settings or state file is truncated names that file, exit 2."""
    run = tmp_path / "searches" / "20260101-000000-search"
    run.mkdir(parents=True)
    from taslora_core.search import Constraints, SearchConfig, SearchRunConfig
    from taslora_core.search.run_folder import write_settings
    from taslora_core.space import SearchSpace

    write_settings(run, SearchRunConfig().options(), SearchSpace.preset("fmnist"), Constraints(), SearchConfig(), 1)
    (run / "state.json").write_text('{"generation": 1}')
    (run / name).write_text('{"format": "taslora-sea')
    res = runner.invoke(app, ["search", "--workdir", str(tmp_path), "--resume", str(run)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(run / name) in lines[0] and "Traceback" not in res.output, res.stderr
