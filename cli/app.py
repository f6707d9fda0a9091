"""The Typer application objects and the options every command shares."""

from __future__ import annotations

import functools
import os
import sys
import traceback
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

    from taslora_core.atomic import DiskFullError

    types: list[type[BaseException]] = [CheckpointError, SpaceError, SubnetError, WorkspaceError, FileNotFoundError,
                                         DiskFullError]
    try:
        from taslora_core.data import DataUnavailable

        types.append(DataUnavailable)
    except ImportError:  # pragma: no cover - data module always present in a full install
        pass
    return tuple(types)


DEBUG_ENV = "TASLORA_DEBUG"
_debug = False


def debug_enabled() -> bool:
    """True with `taslora --debug` or TASLORA_DEBUG=1: errors keep their tracebacks (for developers)."""
    return _debug or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def damage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a damaged file, caught as a last resort where no checked reader named the file
    (taslora_core.artifact_read is the first line: its errors name the file)."""
    import pickle
    import zipfile

    types: list[type[BaseException]] = [EOFError, zipfile.BadZipFile, pickle.UnpicklingError]
    for module, names in (("safetensors", ("SafetensorError",)), ("google.protobuf.message", ("DecodeError",)),
                          ("onnx.checker", ("ValidationError",)), ("onnx.onnx_cpp2py_export.checker", ("ValidationError",)),
                          ("onnxruntime.capi.onnxruntime_pybind11_state",
                           ("InvalidProtobuf", "Fail", "InvalidGraph", "NoSuchFile"))):
        mod = sys.modules.get(module)  # only modules the command imported can have raised
        types.extend(t for t in (getattr(mod, n, None) for n in names) if isinstance(t, type))
    return tuple(types)


def handle_errors(func: F) -> F:
    """Decorator: turn known bad-input errors (and, as a last resort, damaged-file errors) into a one-line
    message and exit code 2; with --debug / TASLORA_DEBUG=1 the traceback is printed first."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err_console.print("interrupted; finished checkpoints are kept (resume with --resume where offered)")
            sys.exit(130)
        except Exception as err:  # noqa: BLE001 - sorted below; anything else keeps its traceback
            if isinstance(err, (*user_errors(), ValueError)):
                message = str(err)
            elif isinstance(err, damage_errors()):
                message = (f"a damaged file could not be read ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                           "check the files the command read, or run `taslora verify` on an export folder")
            else:
                raise
            if debug_enabled():
                traceback.print_exc()
            raise fail(message) from None

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
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help=f"Show the traceback of errors (for developers; or {DEBUG_ENV}=1).")
    ] = False,
    allow_modified: Annotated[
        bool, typer.Option("--allow-modified", help="Load artifacts whose sha256 differs from the one recorded when "
                           "they were written (prints a warning; or TASLORA_ALLOW_MODIFIED=1).")
    ] = False,
) -> None:
    """TAS-LoRA toolchain."""
    global _debug
    from taslora_core import integrity

    # the flags hold for this command and the commands it chains in-process (run_command), then are restored,
    # so a later call in the same process (tests, a notebook) does not inherit them
    previous = (_debug, integrity.allow_modified_flag())
    _debug = debug or previous[0]
    integrity.set_allow_modified(allow_modified or previous[1])

    def restore() -> None:
        global _debug
        _debug = previous[0]
        integrity.set_allow_modified(previous[1])

    ctx.call_on_close(restore)
