"""Config values checked and parsed against the dataclass fields' own annotations (TOML tables, `--set K=V`)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

from spinal.errors import InputError

T = TypeVar("T")


def option(help: str, default: Any = dataclasses.MISSING, *, flag: str | None = None, short: str | None = None,
           cli: bool = True, extra: dict | None = None, **kw: Any) -> Any:
    """A documented config field: ``help`` is the CLI help and the TOML documentation; ``flag``/``short``
    rename its CLI option (default ``--field-name``); ``cli=False`` keeps it TOML-only; ``extra``: more metadata."""
    meta = {"help": help, "flag": flag, "short": short, "cli": cli, **(extra or {})}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def hints(cls: type) -> dict[str, Any]:
    """The evaluated annotation of every field (``from __future__ import annotations`` leaves strings)."""
    return typing.get_type_hints(cls)


def default_of(f: dataclasses.Field) -> Any:
    """A field's default, or ``dataclasses.MISSING`` when it is required."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def type_name(tp: Any) -> str:
    if _is_union(tp):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def accepts(tp: Any, value: Any) -> bool:
    """Whether ``value`` (as TOML gives it) has the annotated type; ints pass for floats, bools never for ints."""
    if tp is Any:
        return True
    if _is_union(tp):
        return any(accepts(a, value) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return isinstance(value, (list, tuple)) and all(accepts(item, v) for v in value)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (tp, dict))
    return isinstance(value, origin or tp)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a config dataclass from a TOML table, refusing unknown keys and wrong types by name.

    Nested configs (a field typed ``SomeConfig`` or ``tuple[SomeConfig, ...]``) are built from their tables."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    types_ = hints(cls)
    values = {}
    for k, v in data.items():
        tp = types_[k]
        if not accepts(tp, v):
            raise InputError(f"{where}: key '{k}' = {v!r} has the wrong type; expected {type_name(tp)}")
        values[k] = _nested(tp, v, f"{where} {k}")
    missing = sorted(k for k, f in fields.items() if k not in values and default_of(f) is dataclasses.MISSING)
    if missing:
        raise InputError(f"{where}: missing key(s) {missing}")
    return cls(**values)


def _nested(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where)
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        return tuple(_nested(item, v, f"{where} #{i + 1}") for i, v in enumerate(value))
    return value


def parse_text(text: str, tp: Any, name: str) -> Any:
    """A ``KEY=VALUE`` string as the annotated type: 'none' for an optional, true/false for a bool."""
    text = text.strip()
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null", "") and len(args) < len(typing.get_args(tp)):
            return None
        tp = args[0] if len(args) == 1 else str
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise InputError(f"{name}={text}: expected true or false")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise InputError(f"{name}={text}: expected {'an integer' if tp is int else 'a number'} "
                             f"({type_name(tp)})") from None
    return text


def settings(cls: type[T], items: list[str], where: str) -> dict[str, Any]:
    """``["k=v", …]`` -> values typed by ``cls``'s annotations; unknown keys are refused by name."""
    types_ = hints(cls)
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"{where} {item!r}: expected KEY=VALUE, e.g. {where} mfu=0.35")
        k, v = (x.strip() for x in item.split("=", 1))
        if k not in types_:
            raise InputError(f"{where} {k}: unknown key; known: {sorted(types_)}")
        out[k] = parse_text(v, types_[k], f"{where} {k}")
    return out


def apply_sets(doc: dict, sets: list[str] | tuple[str, ...], classes: dict[str, type]) -> None:
    """``TABLE.KEY=VALUE`` overrides (``spinal run --set``) into ``doc``'s tables, typed by each table's config class
    in ``classes``; a key the class's ``RUN_SETS`` names is refused (the run sets it itself)."""
    for item in sets:
        key, eq, value = item.partition("=")
        table, dot, name = key.strip().partition(".")
        if not (eq and dot and table in classes and name):
            raise InputError(f"--set {item!r}: expected TABLE.KEY=VALUE with TABLE one of {', '.join(classes)}, "
                             "e.g. --set analyze.n_boot=2000")
        if name in getattr(classes[table], "RUN_SETS", ()):
            raise InputError(f"--set {item!r}: the run sets {table}.{name} itself")
        doc.setdefault(table, {}).update(settings(classes[table], [f"{name}={value}"], f"--set [{table}]"))
