"""Exception types shared by the deploy modules (kept here so that no module imports another for its errors)."""

from __future__ import annotations


class ExportError(RuntimeError):
    """The exported ONNX file does not have the required properties."""


class ParityError(AssertionError):
    """Two runtimes disagree by more than the allowed tolerance."""


class ProviderUnavailableError(RuntimeError):
    """The requested onnxruntime execution provider is not active in the session."""
