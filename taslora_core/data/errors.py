"""The one error the data package raises for missing or corrupt data, and the folder layout it expects."""

from __future__ import annotations

__all__ = ["DataUnavailable", "FOLDER_LAYOUT"]

FOLDER_LAYOUT = "PATH/train/<class>/*.jpeg and PATH/val/<class>/*.jpeg"
"""The ImageNet-style layout `--data PATH` expects (quoted in error messages)."""


class DataUnavailable(RuntimeError):
    """Data is missing or corrupt. The message is always one line and says how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))
