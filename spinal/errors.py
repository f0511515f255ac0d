"""Errors a user can act on: each carries the offending values and the fix; cli.py maps them to one line and exit 2."""

from __future__ import annotations


class SpinalError(Exception):
    """Base class: bad input or a refused operation, reported as one line with exit code 2."""


class InputError(SpinalError):
    """Bad user input: a file, an option, a prompt set."""


class ModelError(SpinalError):
    """A checkpoint that cannot be loaded, discovered or trusted."""


class StoreError(SpinalError):
    """A store that is missing, incomplete, incompatible or damaged."""


class IntegrityError(StoreError):
    """Stored bytes fail their checksum, or activations are not finite."""


def first_line(e: BaseException, *, typed: bool = False) -> str:
    """An exception's first line, the part that fits a one-line error; ``typed``: prefixed ``"ErrorType: "``.
    An empty message gives the type name alone."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    return f"{type(e).__name__}: {lines[0]}" if typed else lines[0]
