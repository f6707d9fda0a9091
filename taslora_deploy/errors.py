"""Exception types shared by the deploy modules (kept here so that no module imports another for its errors)."""

from __future__ import annotations


class ExportError(RuntimeError):
    """The exported ONNX file does not have the required properties."""


class ParityError(AssertionError):
    """Two runtimes disagree by more than the allowed tolerance."""


class ProviderUnavailableError(RuntimeError):
    """The requested onnxruntime execution provider is not active in the session."""


class OnnxRuntimeMissing(ValueError):
    """onnxruntime is not installed (the `cpu` or `gpu` extra): a user error with the install line."""


class PrecisionGateError(AssertionError):
    """A reduced-precision artifact lost more top-1 than allowed; ``report`` holds the measured numbers."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report
