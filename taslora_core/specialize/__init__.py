"""`taslora specialize`: fine-tune the ONE subnet a user ships, alone, from its routed mixture of experts.

One module per job: `config` (SpecializeConfig, the single source of the CLI's defaults and help), `inputs` (the
subnet and the checkpoint it starts from), `model` (SubnetDeltas: what is trained, per weights mode), `trainer`
(the verb: steps, validation, early stopping, resume), `run_files` (the run folder's files, and how an export
finds and reads a finished run).

    result = specialize(SpecializeConfig(steps=500))      # latest best.json + latest MoLE run -> SpecializeResult
    run = read_specialized(result.run_dir)                 # the checked final deltas, as `taslora export` folds them
"""

from taslora_core.specialize.config import DEFAULT_STEPS, WEIGHT_MODES, SpecializeConfig
from taslora_core.specialize.inputs import checkpoint_hashes
from taslora_core.specialize.model import SubnetDeltas
from taslora_core.specialize.run_files import (
    DELTAS_FILE, KIND, SPECIALIZE_JSON, SpecializedRun, find_specialized, pick_specialized, read_specialized,
)
from taslora_core.specialize.trainer import SpecializeResult, specialize

__all__ = ["DEFAULT_STEPS", "DELTAS_FILE", "KIND", "SPECIALIZE_JSON", "WEIGHT_MODES", "SpecializeConfig",
           "SpecializeResult", "SpecializedRun", "SubnetDeltas", "checkpoint_hashes", "find_specialized",
           "pick_specialized", "read_specialized", "specialize"]
