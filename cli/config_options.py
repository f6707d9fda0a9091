"""Command-line options derived from the training config dataclasses (their single source of defaults and help).

A config field made with `taslora_core.train.setting(default, help, ...)` becomes one option: its spelling is
`--<name-with-dashes>` (or the field's `flag`), its type the field's (or its `cli_type`), its default the field's
default, its help the field's help. `workdir` and `seed` use the options every command shares (`app.WorkdirOpt`,
`app.SeedOpt`). Fields with a plain default have no option.

    @app.command("train")
    @handle_errors
    @config_options(MoLETrainConfig)
    def train_cmd(cfg: MoLETrainConfig, resume: ResumeOpt = None) -> None: ...
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from taslora_cli.app import SeedOpt, WorkdirOpt

# Config fields read through the options every command shares, not through their own metadata.
SHARED_OPTIONS: dict[str, Any] = {"workdir": WorkdirOpt, "seed": SeedOpt}


def _is_option(f: dataclasses.Field) -> bool:
    return "help" in f.metadata or f.name in SHARED_OPTIONS


def config_option(config_cls: type, name: str) -> Any:
    """The `Annotated[type, typer.Option(...)]` of config field `name` (usable in any command's signature)."""
    if name in SHARED_OPTIONS:
        return SHARED_OPTIONS[name]
    f = {f.name: f for f in dataclasses.fields(config_cls)}[name]
    meta = f.metadata
    if "help" not in meta:
        raise ValueError(f"{config_cls.__name__}.{name} has no command-line option (no help metadata)")
    kind = meta.get("cli_type") or get_type_hints(config_cls)[name]
    flag = meta.get("flag") or "--" + name.replace("_", "-")
    return Annotated[kind, typer.Option(flag, help=meta["help"])]


def config_default(config_cls: type, name: str) -> Any:
    """The command-line default of config field `name`: the field's default (a Path for the shared --workdir)."""
    default = {f.name: f for f in dataclasses.fields(config_cls)}[name].default
    return Path(default) if name == "workdir" else default


def config_from_options(config_cls: type, options: dict[str, Any]) -> Any:
    """Build `config_cls` from parsed option values (Paths stored as strings, as the config's fields are)."""
    return config_cls(**{k: str(v) if isinstance(v, Path) else v for k, v in options.items()})


def _option_order(config_cls: type) -> list[str]:
    """Fields the class itself declares first, then the inherited ones, the shared workdir and seed last."""
    names = [f.name for f in dataclasses.fields(config_cls) if _is_option(f)]
    declared = inspect.get_annotations(config_cls)
    own = [n for n in declared if n in names and n not in SHARED_OPTIONS]
    inherited = [n for n in names if n not in declared and n not in SHARED_OPTIONS]
    return own + inherited + [n for n in names if n in SHARED_OPTIONS]


def config_options(config_cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a Typer command `func(cfg, **own_options)`: the command gets one option per documented field
    of `config_cls` (besides `func`'s own options) and `func` receives the config built from them as `cfg`."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = get_type_hints(func, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(func).parameters.values() if p.name != "cfg"]
        order = _option_order(config_cls)
        fields = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=config_option(config_cls, n),
                                    default=config_default(config_cls, n)) for n in order]
        shared = [p for p in fields if p.name in SHARED_OPTIONS]
        params = [p for p in fields if p.name not in SHARED_OPTIONS] + own + shared
        field_names = set(order)

        @functools.wraps(func)
        def command(**options: Any) -> Any:
            cfg = config_from_options(config_cls, {k: options.pop(k) for k in list(options) if k in field_names})
            return func(cfg, **options)

        command.__signature__ = inspect.Signature(params, return_annotation=inspect.Signature.empty)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
