"""torchrun entry point of tests/test_ddp.py: `python ddp_rank_dump.py DUMP_DIR <taslora args>`.

Runs the `taslora` command line with a training callback (the loop's documented `callback` hook) that writes this
rank's trained tensors to DUMP_DIR/rank<RANK>.safetensors at every epoch end, so the test can compare the ranks'
final states. Test-side only: the production loop knows nothing about it.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from taslora_cli import cmd_train
from taslora_cli.main import app


def _dump_rank(folder: Path, event: str, info: dict[str, Any]) -> None:
    if event != "epoch_end":
        return
    model = info["model"]
    state = model.trainable_state() if hasattr(model, "trainable_state") else model.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / f"rank{rank}.safetensors"))


def main() -> None:
    """Install the dumping callback on the trainers the CLI calls, then run the CLI."""
    folder = Path(sys.argv[1])
    callback = functools.partial(_dump_rank, folder)
    cmd_train.train_mole = functools.partial(cmd_train.train_mole, callback=callback)
    cmd_train.train_supernet = functools.partial(cmd_train.train_supernet, callback=callback)
    app(args=sys.argv[2:], prog_name="taslora")


if __name__ == "__main__":
    main()
