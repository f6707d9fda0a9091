"""Progress of one training epoch: a live rich bar at a terminal, plain lines in a log.

A live bar written to a pipe or a file is drawn once, when it stops, truncated to the console's width
(`epoch 1/6 ━━ 3…`). When the stream is not a terminal, :class:`EpochProgress` prints a plain line instead, at
most every `every_share` of the epoch's steps or every `every_s` seconds, whichever comes first, e.g.
``epoch 1/6 step 117/390 (30%): loss 0.4123 lr experts 5.00e-04, 962 img/s, elapsed 0:00:16, ETA 0:00:37``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["EpochProgress", "format_duration", "is_terminal"]


def is_terminal(stream: Any) -> bool:
    """True when `stream` is an interactive terminal (a live bar can redraw itself there)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """`H:MM:SS` (rich's style, so both modes read alike)."""
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class EpochProgress:
    """Progress of one epoch (rank 0, unless quiet): `update(info)` after every step; a context manager.

    `stream` defaults to sys.stderr at construction; `interactive` (default: whether the stream is a terminal)
    picks the live bar or plain lines; `clock` is injectable for tests.
    """

    def __init__(self, enabled: bool, epoch: int, epochs: int, total: int, done: int, *,
                 stream: TextIO | None = None, interactive: bool | None = None,
                 every_share: float = 0.1, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled, self.total, self.done = enabled, int(total), int(done)
        self.title = f"epoch {epoch + 1}/{epochs}"
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = is_terminal(self.stream) if interactive is None else interactive
        self.every_steps = max(1, int(self.total * every_share))
        self.every_s, self.clock = every_s, clock
        self.bar: Any = None
        if enabled and self.interactive:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=Console(file=self.stream))
            self.task_id = self.bar.add_task(self.title, total=total, completed=done, info="")
        self.start_step = self.done
        self.start_t = self.last_t = clock()
        self.last_step = self.done

    def __enter__(self) -> "EpochProgress":
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, info: str) -> None:
        """One more step done; `info` is the step's loss / learning-rate / images-per-second text."""
        if not self.enabled:
            return
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task_id, advance=1, info=info)
            return
        now = self.clock()
        last_step_of_epoch = self.done >= self.total
        if not (last_step_of_epoch or self.done - self.last_step >= self.every_steps or now - self.last_t >= self.every_s):
            return
        self.last_step, self.last_t = self.done, now
        print(self.line(info, now), file=self.stream, flush=True)

    def line(self, info: str, now: float) -> str:
        """The plain progress line at time `now` (ETA from this session's steps per second)."""
        elapsed = now - self.start_t
        steps = self.done - self.start_step
        left = max(self.total - self.done, 0)
        eta = format_duration(elapsed / steps * left) if steps > 0 else "?"
        pct = 100 * self.done / max(self.total, 1)
        return (f"{self.title} step {self.done}/{self.total} ({pct:.0f}%): {info}, elapsed {format_duration(elapsed)}, "
                f"ETA {eta}")
