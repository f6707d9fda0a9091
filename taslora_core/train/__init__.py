"""Supernet training, MoLE training (and its baselines), supernet import and checkpoint evaluation.

One module per job: `config` (settings, the single source of the CLI defaults), `recipes` (the named bundles of
MoLE settings behind `taslora train --recipe`), `loop` (the training loop), `optim` (optimisers, schedules),
`tasks` (what the loop trains), `resume`, `run_files`, `run_setup`, `summary`, `supernet_trainer`,
`mole_trainer`, `importer`, `eval_run`. Every public name is importable from here.

Python API (the `taslora supernet train|import`, `train` and `eval` commands call exactly these):

    run = train_supernet(SupernetTrainConfig(space="fmnist", epochs=10))        # -> RunResult(run_dir, summary)
    run = train_mole(MoLETrainConfig(supernet=None, epochs=10))                 # latest supernet of the workdir
    run = train_mole(MoLETrainConfig(mode="finetune"))                          # the full fine-tuning baseline
    run = train_mole(MoLETrainConfig(recipe="group-hard"))                      # a training recipe (RECIPES)
    path = import_supernet("supernet-tiny.pth", "autoformer-t", workdir)       # official AutoFormer checkpoint
    out = evaluate_run("taslora-runs/mole/<run>", "largest", use_experts=True)  # -> EvalReport

Run folders (`taslora_core.workspace`):

    supernets/<run>/  supernet.safetensors  space.json (space, data, split, train, kind[, finetuned_from...])
                      split.json  metrics.jsonl  summary.json  train_config.json  train_state.pt
    mole/<run>/       mole.safetensors  mole.json (config, space, supernet_dir, supernet_sha256, data, split,
                      train, mode)  split.json  metrics.jsonl  summary.json  train_config.json  train_state.pt

`--mode finetune` (full fine-tuning of the supernet, no MoLE, same budget) writes a *supernets* run whose
space.json has `finetuned_from` (and its sha256) and `mode: "finetune"`; eval, search and export open it like
any supernet. `train` without `--supernet` uses the newest supernet run that is not such a fine-tuned baseline.

The weights file (`supernet.safetensors` / `mole.safetensors`) is written last: it marks the run finished.
`train_state.pt` is the resumable state (written at every epoch end, every `save_every_steps` steps, and once
more at the end with `finished: True`). `resume="latest"` continues the newest unfinished run of the same kind
(supernet training, or `train` with the given mode) in the workdir; `resume=PATH` continues that run folder
(its mode comes from the run). A
resumed run takes every setting from its own `train_config.json`; only runtime options (quiet, device,
threads, workers, workdir) come from the new call.
"""

from taslora_core.train.config import MODES, RUNTIME_FIELDS, MoLETrainConfig, SupernetTrainConfig, TrainConfig, setting
from taslora_core.train.eval_run import EvalReport, evaluate_run, resolve_subnet
from taslora_core.train.importer import import_supernet
from taslora_core.train.loop import TRAIN_STATE, LoopConfig, LoopResult, TrainingDiverged, TrainTask
from taslora_core.train.mole_trainer import default_supernet, train_mole
from taslora_core.train.recipes import RECIPES, recipe_settings, resolve_recipe
from taslora_core.train.resume import find_resumable
from taslora_core.train.run_files import SPLIT_FILE, SUMMARY, TRAIN_CONFIG, RunResult
from taslora_core.train.summary import summary_subnets
from taslora_core.train.supernet_trainer import train_supernet
from taslora_core.train.tasks import FinetuneTask, ModelTask, MoLETask, SupernetTask

__all__ = [
    "TrainConfig", "SupernetTrainConfig", "MoLETrainConfig", "setting", "RunResult", "EvalReport", "TrainingDiverged",
    "MODES", "RUNTIME_FIELDS", "train_supernet", "train_mole", "import_supernet", "evaluate_run", "resolve_subnet",
    "default_supernet", "find_resumable", "summary_subnets", "TrainTask", "ModelTask", "SupernetTask",
    "FinetuneTask", "MoLETask", "LoopConfig", "LoopResult", "TRAIN_STATE", "TRAIN_CONFIG", "SPLIT_FILE", "SUMMARY",
    "RECIPES", "recipe_settings", "resolve_recipe",
]
