"""Standalone ViTs: one subnet's shapes as plain layers (:mod:`~taslora_deploy.standalone.model`), saved and
loaded as model.safetensors + config.json (:mod:`~taslora_deploy.standalone.io`)."""

from __future__ import annotations

from taslora_deploy.standalone.io import load_standalone, save_standalone
from taslora_deploy.standalone.model import StandaloneViT, materialize

__all__ = ["StandaloneViT", "load_standalone", "materialize", "save_standalone"]
