"""CLI options derived from config fields: a field's flag, default, type and help exist once, in the config."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, Callable, Optional

import typer

from spinal.fields import default_of, hints


PROGRESS = typer.Option(True, "--progress/--no-progress", help="draw a progress bar on stderr")
VERBOSE = typer.Option(False, "--verbose", "-v", help="log what happens")

def _annotation(tp: Any) -> Any:
    """``X | None`` as ``Optional[X]`` (the spelling every typer version reads)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return Optional[args[0]]
    return tp


def _param(f: dataclasses.Field, tp: Any, argument: bool, default: Any) -> inspect.Parameter:
    help_ = f.metadata.get("help", "")
    if default is dataclasses.MISSING:
        default = ...
    if argument:
        info = typer.Argument(default, help=help_)
    else:
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if tp is bool:  # off by default: a switch; on by default: --x/--no-x
            flag = flag if default is False else f"{flag}/--no-{flag[2:]}"
        names = [flag] + ([f.metadata["short"]] if f.metadata.get("short") else [])
        info = typer.Option(default, *names, help=help_)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=_annotation(tp))


def config_options(cls: type, *, arguments: dict[str, Any] | None = None, skip: tuple[str, ...] = ()) -> Callable:
    """Give a typer verb one parameter per CLI field of ``cls`` (``arguments``: positional ones, with their
    default or ``...``); the verb receives them as a dict in its first parameter ``options``."""
    arguments = arguments or {}

    def decorate(fn: Callable) -> Callable:
        own = list(inspect.signature(fn).parameters.values())[1:]
        types_ = hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and f.name not in skip]
        names = {f.name for f in fields}
        params = [_param(f, types_[f.name], f.name in arguments, arguments.get(f.name, default_of(f)))
                  for f in fields]
        params.sort(key=lambda p: p.name not in arguments)  # positional arguments first, in field order

        @functools.wraps(fn)
        def verb(**kw: Any) -> Any:
            return fn({k: v for k, v in kw.items() if k in names}, **{k: v for k, v in kw.items() if k not in names})

        own_hints = typing.get_type_hints(fn)
        verb.__signature__ = inspect.Signature(params + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                                                         for p in own])  # type: ignore[attr-defined]
        verb.__annotations__ = {**{p.name: p.annotation for p in params},
                                **{p.name: own_hints.get(p.name, Any) for p in own}}
        del verb.__wrapped__  # typer must read the signature above, not fn's
        return verb

    return decorate
