"""`taslora specialize`: fine-tune the chosen subnet alone from its routed mixture (options from SpecializeConfig)."""

from __future__ import annotations

from typing import Annotated

import typer

from taslora_cli.app import app, console, fail, handle_errors
from taslora_cli.config_options import config_options
from taslora_core.specialize.config import SpecializeConfig

ResumeOpt = Annotated[str | None, typer.Option(
    "--resume", help="Continue a killed specialize run: its folder, or 'latest' (newest unfinished one in --workdir). "
    "Settings come from the run.")]


def _say(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True, markup=False)


@app.command("specialize")
@handle_errors
@config_options(SpecializeConfig)
def specialize_cmd(cfg: SpecializeConfig, resume: ResumeOpt = None) -> None:
    """Fine-tune ONE subnet alone, starting from its routed mixture of experts (router run once, then frozen),
    with early stopping on the held-out validation split; `taslora export` then folds the result exactly as it
    folds the experts (zero overhead). Writes a specialized/ run: specialized.safetensors (the final weight
    deltas), specialize.json, log.txt."""
    from taslora_core.specialize import specialize
    from taslora_core.train import TrainingDiverged

    try:
        result = specialize(cfg, resume=resume, log=_say)
    except TrainingDiverged as err:
        raise fail(f"{err}", code=3) from None
    before, after = result.val_before, result.val_after
    _say(f"validation ({after['count']} held-out images): top-1 {100 * before['top1']:.2f}% -> "
         f"{100 * after['top1']:.2f}% ({result.gain_points:+.2f} points), loss {before['loss']:.4f} -> "
         f"{after['loss']:.4f}")
    _say(f"specialized run written to {result.run_dir}; `taslora export` folds it for subnet "
         f"{result.record['subnet']}")
