"""The Typer application objects and the options every command shares."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from taslora_core import __version__
from taslora_core.workspace import DEFAULT_WORKDIR

app = typer.Typer(
    name="taslora",
    help="TAS-LoRA: search a ViT that fits a budget in a MoLE supernet, then export it with zero LoRA overhead.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
supernet_app = typer.Typer(help="Train or import the weight-entangled supernet.", no_args_is_help=True)
analyze_app = typer.Typer(help="Analyse a trained MoLE checkpoint (feature collapse, routing).", no_args_is_help=True)
app.add_typer(supernet_app, name="supernet")
app.add_typer(analyze_app, name="analyze")

# Wide enough for the tables when output is piped (rich falls back to 80 columns otherwise).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

WorkdirOpt = Annotated[
    Path, typer.Option("--workdir", help="Workspace folder holding runs, searches and exports.", show_default=True)
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (sampling, initialisation, data split).")]
DEFAULT_WORKDIR_PATH = DEFAULT_WORKDIR

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    first = " ".join(str(message).split())
    err_console.print(f"[bold red]error:[/] {escape(first)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input: reported in one line with exit code 2, no traceback."""
    from taslora_core.checkpoint import CheckpointError
    from taslora_core.space import SpaceError
    from taslora_core.subnet import SubnetError
    from taslora_core.workspace import WorkspaceError

    types: list[type[BaseException]] = [CheckpointError, SpaceError, SubnetError, WorkspaceError, FileNotFoundError]
    try:
        from taslora_core.data import DataUnavailable

        types.append(DataUnavailable)
    except ImportError:  # pragma: no cover - data module always present in a full install
        pass
    return tuple(types)


def handle_errors(func: F) -> F:
    """Decorator: turn known bad-input errors into a one-line message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except user_errors() as err:
            raise fail(str(err)) from None
        except ValueError as err:
            raise fail(str(err)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; finished checkpoints are kept (resume with --resume where offered)")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def run_command(step: str, args: list[str]) -> None:
    """Run one taslora command in-process (as typed on the command line); a non-zero exit raises a one-line
    failure naming the step. Used by commands that chain others (quickstart) and by the benchmarks."""
    from rich.rule import Rule

    from taslora_cli.main import app as main_app

    console.print(Rule(f"[bold]{escape(step)}[/]: taslora {escape(' '.join(args))}"))
    command = typer.main.get_command(main_app)
    try:
        command.main(args=args, prog_name="taslora", standalone_mode=False)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
        if code:
            raise fail(f"step '{step}' failed (exit {code}); see the message above", code) from None
    except typer.Exit as err:
        if err.exit_code:
            raise fail(f"step '{step}' failed (exit {err.exit_code}); see the message above", err.exit_code) from None


def version_callback(value: bool) -> None:
    """--version."""
    if value:
        console.print(f"taslora {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """TAS-LoRA toolchain."""
