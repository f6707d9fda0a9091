"""Training recipes of `taslora train`: named bundles of the MoLE settings that decide how the experts learn.

Every setting a recipe sets is also a field of `MoLETrainConfig` (and a `taslora train` option) whose default is
None, "the recipe's value"; a value given explicitly wins over the recipe's. `resolve_recipe` fills the None
fields from the chosen recipe and checks the combination, so a run records (train_config.json, mole.json) the
values it used. Every recipe keeps the experts exactly foldable into the sliced weights.

- ``paper``: the TAS-LoRA paper (`tas-lora-method.md`): K experts (one per architecture group), group-wise
  router init with bias `--beta`, learned router (SGD, frozen during warm-up), one uniform subnet per step.
- ``group-p90``: group-wise init with beta set from K so the own expert starts at 0.9 of the routing mass.
- ``group-frozen``: the same init, router never trained (StableMoE's frozen routing from the start).
- ``group-hard``: one-hot routing to the block's group (hash-layer style): the bounding arm of held routing.
- ``factorised``: HydraLoRA-style experts: a shared down-projection, a shared up-projection and one per value of
  the factors that shape the layer (heads or MLP ratio, and embed dim), weighted by the block's architecture.
- ``sandwich``: BigNAS's sandwich rule with in-place distillation: the largest, the smallest and `sandwich_random`
  random subnets every step (the first random one is the subnet every other recipe trains at that step); the
  largest learns from the labels, the others from its soft logits (KL). Gradients are averaged over the step's
  subnets. A step costs 2 + sandwich_random forward/backward passes (the run reports its passes).
- ``mi``: the paper plus a routing mutual-information term -mi_weight * (H(E) - H(E | group)) in the loss.
- ``lora-plus``: the paper with LoRA+'s learning rates: every up-projection U (LoRA's B) at 16x the experts' LR.
- ``sandwich-lora-plus``: sandwich sampling with in-place distillation and LoRA+'s learning rates, at the
  optimisation settings it was measured with (issue 26's screen on the wide-10k supernet: LoRA alpha 16, experts'
  LR 1e-3 with U at 16x, router LR 1).

The optimisation settings (experts' LR, LoRA alpha, router LR) are recipe-controlled too: a recipe that names them
carries the values it was measured with; every other recipe uses the paper's (5e-4, 1, 0.1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from taslora_core.mole import EXPERT_STRUCTURES

ROUTINGS = ("learned", "frozen", "hard")
SAMPLINGS = ("uniform", "sandwich")

PAPER_SETTINGS: dict[str, Any] = {
    "expert_structure": "mixture",
    "router_init_mass": 0.0,  # 0: the group-wise bias is --beta
    "routing": "learned",
    "sampling": "uniform",
    "sandwich_random": 1,
    "distill": False,
    "mi_weight": 0.0,
    "lora_plus": 1.0,
    "expert_lr": 5e-4,
    "lora_alpha": 1.0,
    "router_lr": 0.1,
}
"""The recipe-controlled settings and the paper's values (what a run without a recipe used)."""
OPTIMISATION_SETTINGS = ("expert_lr", "lora_alpha", "router_lr")
"""The recipe-controlled settings that are optimisation settings (recipe-controlled since issue 26; a run written
before then recorded them in its train_config.json only)."""

RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    "paper": ({}, "the TAS-LoRA paper"),
    "group-p90": ({"router_init_mass": 0.9}, "own expert starts at 0.9 of the routing mass"),
    "group-frozen": ({"router_init_mass": 0.9, "routing": "frozen"}, "group-p90 with the router never trained"),
    "group-hard": ({"routing": "hard"}, "one-hot routing to the block's group"),
    "factorised": ({"expert_structure": "factorised", "routing": "frozen"},
                   "shared LoRA + one up-projection per heads/MLP-ratio and embed-dim value"),
    "sandwich": ({"sampling": "sandwich", "distill": True},
                 "largest + smallest + random subnets per step, in-place distillation"),
    "mi": ({"mi_weight": 0.1}, "routing mutual-information term, weight 0.1"),
    "lora-plus": ({"lora_plus": 16.0}, "U's learning rate 16x D's"),
    "sandwich-lora-plus": ({"sampling": "sandwich", "distill": True, "lora_plus": 16.0, "expert_lr": 1e-3,
                            "lora_alpha": 16.0, "router_lr": 1.0},
                           "sandwich + LoRA+ at the settings the wide-10k screen measured"),
}
"""name -> (settings that differ from the paper's, one-line description)."""

DEFAULT_RECIPE = "sandwich-lora-plus"
"""The recipe of `taslora train --mode mole` without --recipe; the single-lora and finetune baselines take `paper`."""


def default_recipe(mode: str) -> str:
    """The recipe a run of `mode` takes without --recipe."""
    return DEFAULT_RECIPE if mode == "mole" else "paper"


def recipe_names() -> str:
    """The recipe names, comma-separated (for messages and help)."""
    return ", ".join(RECIPES)


def recipe_help() -> str:
    """`--recipe`'s help: every recipe with what it changes."""
    parts = []
    for name, (settings, what) in RECIPES.items():
        changes = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in settings.items())
        parts.append(f"{name} ({what}{': ' + changes if changes else ''})")
    return ("Training recipe (a bundle of the settings marked 'recipe'; default: " + DEFAULT_RECIPE + " for --mode "
            "mole, paper for the single-lora and finetune baselines): " + "; ".join(parts) + ".")


def recipe_settings(name: str) -> dict[str, Any]:
    """Every recipe-controlled setting of recipe `name` (the paper's where the recipe does not change it)."""
    if name not in RECIPES:
        raise ValueError(f"unknown --recipe '{name}'; choose one of {recipe_names()}")
    return {**PAPER_SETTINGS, **RECIPES[name][0]}


def resolve_recipe(cfg: Any) -> Any:
    """`cfg` (a MoLETrainConfig) with its recipe named (`default_recipe` of its mode when None) and every
    recipe-controlled field that is None set to the recipe's value; raises ValueError (one line: the problem and
    the fix) for an unknown recipe or a combination that cannot train."""
    name = cfg.recipe or default_recipe(cfg.mode)
    settings = recipe_settings(name)
    filled = {k: v for k, v in settings.items() if getattr(cfg, k) is None}
    out = dataclasses.replace(cfg, recipe=name, **filled)
    check_settings(out)
    return out


def check_settings(cfg: Any) -> None:
    """Refuse settings that are unknown or do not combine (after `resolve_recipe` filled them)."""
    for name, value, choices in (("--expert-structure", cfg.expert_structure, EXPERT_STRUCTURES),
                                 ("--routing", cfg.routing, ROUTINGS), ("--sampling", cfg.sampling, SAMPLINGS)):
        if value not in choices:
            raise ValueError(f"unknown {name} '{value}'; choose one of {', '.join(choices)}")
    if not 0.0 <= cfg.router_init_mass < 1.0:
        raise ValueError(f"--router-init-mass must be in [0, 1) (0: use --beta), got {cfg.router_init_mass}")
    if cfg.sandwich_random < 0:
        raise ValueError(f"--sandwich-random must be >= 0, got {cfg.sandwich_random}")
    if cfg.mi_weight < 0:
        raise ValueError(f"--mi-weight must be >= 0, got {cfg.mi_weight}")
    for name, value in (("--expert-lr", cfg.expert_lr), ("--lora-alpha", cfg.lora_alpha), ("--router-lr", cfg.router_lr)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value:g}")
    if not cfg.lora_plus > 0:
        raise ValueError(f"--lora-plus must be > 0 (1: one LR for U and D), got {cfg.lora_plus}")
    if not cfg.distill_temperature > 0:
        raise ValueError(f"--distill-temperature must be > 0, got {cfg.distill_temperature}")
    if cfg.expert_structure == "factorised":
        if cfg.routing != "frozen":
            raise ValueError("factorised experts are weighted by the block's architecture, not by a router; use "
                             "--routing frozen with --expert-structure factorised")
        if cfg.mode == "single-lora":
            raise ValueError("--mode single-lora trains one mixture expert; drop --expert-structure factorised "
                             "(or use --mode mole)")
    if cfg.mi_weight > 0 and cfg.routing != "learned":
        raise ValueError(f"--mi-weight trains the router, but --routing is {cfg.routing}; use --routing learned "
                         "or --mi-weight 0")
