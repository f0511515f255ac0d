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


def first_line(e: BaseException) -> str:
    """An exception's first non-empty line (or its type name): the part that fits a one-line error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
