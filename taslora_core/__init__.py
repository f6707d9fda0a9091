"""taslora_core: TAS-LoRA supernets, MoLE experts, router, training and search."""

from taslora_core.complexity import flops, params
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_core.supernet import Supernet

__version__ = "0.1.0"

__all__ = ["SearchSpace", "Subnet", "Supernet", "flops", "params", "__version__"]
