"""Entry point of the `taslora` console script: imports every command module so they register."""

from __future__ import annotations

from taslora_cli import cmd_analyze  # noqa: F401  (registers `analyze collapse`, `analyze routing`)
from taslora_cli import cmd_bench  # noqa: F401  (registers `bench`)
from taslora_cli import cmd_doctor  # noqa: F401  (registers `doctor`)
from taslora_cli import cmd_export  # noqa: F401  (registers `export`, `check-overhead`)
from taslora_cli import cmd_latency  # noqa: F401  (registers `latency fit`)
from taslora_cli import cmd_predict  # noqa: F401  (registers `predict`)
from taslora_cli import cmd_quickstart  # noqa: F401  (registers `quickstart`)
from taslora_cli import cmd_runs  # noqa: F401  (registers `runs`)
from taslora_cli import cmd_space  # noqa: F401  (registers `space`, `flops`)
from taslora_cli import cmd_search  # noqa: F401
from taslora_cli import cmd_specialize  # noqa: F401  (registers `specialize`)
from taslora_cli import cmd_train  # noqa: F401
from taslora_cli import cmd_verify  # noqa: F401  (registers `verify`)
from taslora_cli.app import app

__all__ = ["app"]

if __name__ == "__main__":  # pragma: no cover
    app()
