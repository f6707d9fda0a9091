"""Training progress reads well in a log: plain lines (step k/n, images/s, ETA) when the output is not a terminal,
at most every 10% of the epoch or 30 s (fake clock); the live bar only at a terminal; a piped `taslora train`
prints the lines and no bar."""

from __future__ import annotations

import io

from conftest import run_cli
from taslora_core.train.progress import EpochProgress, format_duration, is_terminal


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_every_tenth_of_the_epoch_with_eta():
    out, clock = io.StringIO(), FakeClock()
    with EpochProgress(True, 0, 6, 100, 0, stream=out, clock=clock) as bar:
        assert not bar.interactive and bar.bar is None
        for _ in range(100):
            clock.t += 0.5  # 2 steps per second
            bar.update("loss 0.5000, lr experts 1.00e-03, 256 img/s")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0] == ("epoch 1/6 step 10/100 (10%): loss 0.5000, lr experts 1.00e-03, 256 img/s, "
                        "elapsed 0:00:05, ETA 0:00:45")
    assert lines[-1].startswith("epoch 1/6 step 100/100 (100%)") and lines[-1].endswith("ETA 0:00:00")
    assert "━" not in out.getvalue()


def test_a_slow_epoch_prints_every_30_seconds_and_a_resumed_one_counts_from_its_step():
    out, clock = io.StringIO(), FakeClock()
    bar = EpochProgress(True, 2, 3, 1000, 400, stream=out, clock=clock)  # resumed at step 400 of 1000
    for _ in range(3):
        clock.t += 31.0
        bar.update("x")
    lines = out.getvalue().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["epoch 3/3 step 401/1000 (40%)", "epoch 3/3 step 402/1000 (40%)",
                                                  "epoch 3/3 step 403/1000 (40%)"]
    assert lines[0].endswith("ETA 5:09:29")  # 599 steps left at 31 s per step (this session's rate)


def test_disabled_or_interactive_prints_no_plain_lines():
    out = io.StringIO()
    quiet = EpochProgress(False, 0, 1, 10, 0, stream=out)
    for _ in range(10):
        quiet.update("x")
    assert out.getvalue() == ""
    live = io.StringIO()
    with EpochProgress(True, 0, 1, 10, 0, stream=live, interactive=True) as bar:
        assert bar.bar is not None  # the rich bar, for a terminal
        for _ in range(10):
            bar.update("x")
    assert "step 10/10" not in live.getvalue()


def test_helpers():
    assert format_duration(3725.4) == "1:02:05" and format_duration(-3) == "0:00:00"
    assert not is_terminal(io.StringIO()) and not is_terminal(object())


def test_piped_training_prints_plain_progress_lines(trained_workspace, tmp_path):
    res = run_cli(["train", "--supernet", trained_workspace["supernet_dir"], "--epochs", "1", "--train-subset", "320",
                   "--batch-size", "32", "--val-subset", "64", "--summary-subnets", "0", "--threads", "2",
                   "--workdir", tmp_path, "--seed", "0"])
    assert res.exit_code == 0, res.output
    text = res.output + (res.stderr if res.stderr_bytes is not None else "")
    steps = [ln for ln in text.splitlines() if ln.startswith("epoch 1/1 step ")]
    assert steps and steps[-1].startswith("epoch 1/1 step 10/10 (100%)"), text
    assert all("img/s" in ln and "ETA" in ln for ln in steps)
    assert not [ln for ln in text.splitlines() if "epoch 1/1" in ln and "━" in ln]  # no (truncated) live bar
