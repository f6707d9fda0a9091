"""The shipped evidence of the converged reproductions (benchmarks/reproduction/: the narrow space, the paper's
recipe; benchmarks/reproduction-wide/: the wide space, issue 26's winner) reproduces its claims.

`manifest.json` names a converged supernet run, the seed-0 TAS-LoRA run trained on it and the subnet its search
found, with the test top-1 claimed with and without the experts. `taslora eval` must give the same numbers to
0.1 point from the shipped files alone (relative paths, wherever the repository is checked out).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import requires_fmnist, run_cli

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SHIPPED_FOLDERS = [BENCHMARKS / "reproduction", BENCHMARKS / "reproduction-wide"]


def _manifest(shipped: Path) -> dict:
    return json.loads((shipped / "manifest.json").read_text())


@pytest.mark.parametrize("shipped", SHIPPED_FOLDERS, ids=lambda d: d.name)
def test_manifest_names_shipped_runs_by_relative_path(shipped: Path) -> None:
    m = _manifest(shipped)
    for key in ("supernet_run", "mole_run", "subnet"):
        assert not Path(m[key]).is_absolute() and (shipped / m[key]).exists(), key
    assert (shipped / m["supernet_run"] / "supernet.safetensors").is_file()
    assert (shipped / m["mole_run"] / "mole.safetensors").is_file()
    mole_meta = json.loads((shipped / m["mole_run"] / "mole.json").read_text())
    assert (shipped / m["mole_run"] / mole_meta["supernet_dir"]).resolve() == (shipped / m["supernet_run"]).resolve()
    assert 0 < m["top1_without_experts"] <= 100 and 0 < m["top1_with_experts"] <= 100


@requires_fmnist
@pytest.mark.parametrize("shipped", SHIPPED_FOLDERS, ids=lambda d: d.name)
@pytest.mark.parametrize("experts", [True, False], ids=["with-experts", "without-experts"])
def test_manifest_claim_reproduces_with_taslora_eval(shipped: Path, experts: bool) -> None:
    m = _manifest(shipped)
    args = ["eval", "--ckpt", str(shipped / m["mole_run"]), "--subnet", str(shipped / m["subnet"]), "--split", "test",
            "--json", *([] if experts else ["--no-experts"])]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["count"] == 10000 and measured["use_experts"] is experts
    claim = m["top1_with_experts" if experts else "top1_without_experts"]
    assert abs(measured["top1"] * 100 - claim) <= 0.1
