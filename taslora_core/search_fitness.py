"""Old import path of `taslora_core.search.fitness` (the model-based fitness of the search); same objects."""

from taslora_core.search.fitness import (  # noqa: F401
    MATERIALISE_LIMIT_BYTES, CheckpointFitness, ValData, load_val_data, routing_entropy,
)
