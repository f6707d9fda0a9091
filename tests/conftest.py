"""Shared fixtures and skip helpers.

- `trained_workspace` (session scope): a small trained Fashion-MNIST workspace built once through the CLI
  (`taslora supernet train`, then `taslora train`), returned as {"workdir", "supernet_dir", "mole_dir"}. It is
  trained just enough that the MoLE experts beat the bare supernet on the held-out split (see
  tests/test_train.py::test_mole_improves_validation_loss_over_frozen_supernet).
- Markers `gpu` and `trt` (pyproject.toml): a test marked with them is skipped, with the reason, where CUDA
  (or TensorRT + CUDA, as `taslora_deploy.trt_engine.tensorrt_status` sees it) is missing; where present it runs.
  `without_cuda` / `without_trt` mark the tests that cover machines lacking them (skipped where present).
- `requires_fmnist`: skip marker; `requires_cuda` / `requires_trt` are the `gpu` / `trt` markers.
- `run_cli(args)`: run `taslora ARGS` in-process (typer's CliRunner) and return the result.
- `cli_subprocess(args)`: the argv of a `taslora` subprocess (same interpreter).
"""

from __future__ import annotations

import os

# Shared 2-core machines: OpenMP threads that spin while another process holds the other core slow torch down
# several-fold; passive waiting avoids that. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from taslora_core import data as D  # noqa: E402
from taslora_deploy.trt_engine import tensorrt_status  # noqa: E402

FMNIST_OK = all(
    (D.fmnist_root() / f"{p}-{k}-ubyte.gz").is_file() for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
)

requires_fmnist = pytest.mark.skipif(not FMNIST_OK, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
CUDA_OK = torch.cuda.is_available()
TRT_OK, TRT_REASON = tensorrt_status()
without_cuda = pytest.mark.skipif(CUDA_OK, reason="a CUDA device is present; this covers machines without one")
without_trt = pytest.mark.skipif(TRT_OK, reason="TensorRT and CUDA are present; this covers machines without them")
requires_cuda, requires_trt = pytest.mark.gpu, pytest.mark.trt  # the markers skip by themselves (hook below)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without CUDA and `trt` tests without TensorRT + CUDA, saying why."""
    skips = {"gpu": None if CUDA_OK else pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)"),
             "trt": None if TRT_OK else pytest.mark.skip(reason=f"needs TensorRT and CUDA: {TRT_REASON}")}
    for item in items:
        for marker, skip in skips.items():
            if skip is not None and item.get_closest_marker(marker) is not None:
                item.add_marker(skip)


# The recipe of the shared workspace (kept here so tests can refer to it).
TRAINED_SUPERNET_ARGS = [
    "--space", "fmnist", "--epochs", "2", "--train-subset", "5000", "--batch-size", "64", "--lr", "8e-3",
    "--warmup-epochs", "0", "--drop-path", "0", "--val-subset", "500", "--summary-subnets", "0", "--threads", "2",
]
TRAINED_MOLE_ARGS = [  # the paper's recipe: one pass per step (its LR 1e-2 was chosen for it)
    "--recipe", "paper", "--epochs", "4", "--warmup-epochs", "1", "--train-subset", "2500", "--batch-size", "32", "--expert-lr", "1e-2",
    "--drop-path", "0", "--val-subset", "500", "--summary-subnets", "0", "--threads", "2",
]


def run_cli(args: list[str]) -> Any:
    """`taslora ARGS` in this process; returns typer's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from taslora_cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def cli_subprocess(args: list[str]) -> list[str]:
    """argv of a `taslora ARGS` subprocess with this interpreter."""
    return [sys.executable, "-m", "taslora_cli.main", *[str(a) for a in args]]


def subprocess_env() -> dict[str, str]:
    """Environment for CLI subprocesses (passive OpenMP waiting, unbuffered output)."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _only_run(base: Path) -> Path:
    found = [p for p in base.iterdir() if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small trained fmnist workspace: a supernet run and a MoLE run on it (built once per session)."""
    if not FMNIST_OK:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    workdir = tmp_path_factory.mktemp("trained-workspace")
    threads = torch.get_num_threads()
    try:
        res = run_cli(["supernet", "train", *TRAINED_SUPERNET_ARGS, "--quiet", "--workdir", workdir, "--seed", "0"])
        assert res.exit_code == 0, res.output
        supernet_dir = _only_run(workdir / "supernets")
        res = run_cli(["train", *TRAINED_MOLE_ARGS, "--quiet", "--workdir", workdir, "--seed", "0"])
        assert res.exit_code == 0, res.output
        mole_dir = _only_run(workdir / "mole")
    finally:
        torch.set_num_threads(threads)
    return {"workdir": workdir, "supernet_dir": supernet_dir, "mole_dir": mole_dir}


def fake_time_pairs(ratio: float):
    """A stand-in for `taslora_deploy.timing.time_pairs` in the certificate's latency test: the real runners run
    once per look, and the timings say B/A = `ratio` (0.1% noise), so a verdict test does not depend on how
    this machine's clock behaves over a fraction of a second."""
    import numpy as np

    def time_pairs(run_a, run_b, iters, inner=1, a_first=None, collect=True):
        rng = np.random.default_rng(iters)
        run_a(), run_b()
        ta = 1e-3 * (1 + 0.001 * rng.standard_normal(iters))
        return ta, ta * ratio * (1 + 0.001 * rng.standard_normal(iters))

    return time_pairs
