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


def what_is_at(path) -> str:
    """What is at a path the user gave, in the words an error says: ``"a folder"``, ``"a file"``, ``"a pipe
    (FIFO)"``, ``"a device"``, ``"a socket"``, ``"a symlink loop"``, ``"a dangling symlink (to …)"`` or
    ``"nothing"``. A symlink loop is never reported as a path that does not exist."""
    import errno
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop"
        if os.path.islink(path):
            return f"a dangling symlink (to {os.readlink(path)})"
        return "nothing"
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a pipe (FIFO)"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return words
    return "not a file or folder"


def need(path, kind: str, what: str) -> None:
    """Refuse, before any work, a path whose kind (``"folder"`` or ``"file"``) is wrong: one line naming what is
    there (``what`` names the input, e.g. "trace folder")."""
    found = what_is_at(path)
    if found == f"a {kind}":
        return
    if found == "nothing":
        raise InputError(f"{what} {path} does not exist")
    if found.startswith("a symlink loop"):
        raise InputError(f"{what} {path} is a symlink loop (it leads back to itself); give the real path")
    raise InputError(f"{what} {path} is {found}, not a {kind}")
