"""What is at a store's location before a writer opens it, and the temporary files killed writers left there."""

from __future__ import annotations

import json

from spinal.errors import StoreError
from spinal.store import remote
from spinal.store.lockfile import LOCK_NAME

# The root attribute that makes a Zarr group a SPINAL store (its value: the store's metadata).
ATTR_KEY = "spinal"

# Everything SPINAL writes at a store's top level; --overwrite removes these names and nothing else.
STORE_ENTRIES = ("zarr.json", "hidden", "tokens", "sequences", "units", "lens", LOCK_NAME)


def filesystem(path: str):
    """(fsspec filesystem, root path without a trailing slash) for a local path or an fsspec URL; a URL whose
    package is not installed is one InputError naming it (``spinal.store.remote``)."""
    fs, root = remote.url_to_fs(path)
    return fs, root.rstrip("/")


def root_meta(path: str) -> tuple[str, dict | None]:
    """('missing' | 'unreadable' | 'ok', root zarr.json as a dict)."""
    fs, root = filesystem(path)
    try:
        raw = fs.cat_file(f"{root}/zarr.json")
    except FileNotFoundError:
        return "missing", None
    except Exception as e:
        err = remote.access_error(path, e) if remote.is_remote(path) else None
        if err is not None:  # a server that does not answer says nothing about the store
            raise err from None
        if isinstance(e, OSError):
            return "unreadable", None
        raise
    try:
        doc = json.loads(raw)
        return ("ok", doc) if isinstance(doc, dict) else ("unreadable", None)
    except ValueError:
        return "unreadable", None


def location_state(path: str) -> str:
    """What is at a store path, for writers deciding what they may do:

    absent    nothing there                 empty     a folder with nothing of anyone's in it
    file      a plain file                  foreign   something that is not a SPINAL store
    creating  a SPINAL store whose creation never finished (safe to start again)
    ready     a SPINAL store (complete or resumable)
    damaged   SPINAL's folders whose root ``zarr.json`` is missing or unreadable

    Over ``http(s)://``, which lists no folders, a store is found by its root ``zarr.json`` alone.
    Credentials missing for a bucket, or a server that does not answer, is one StoreError.
    """
    try:
        return _state(path)
    except StoreError:
        raise
    except Exception as e:
        err = remote.access_error(path, e) if remote.is_remote(path) else None
        if err is None:
            raise
        raise err from None


def _state(path: str) -> str:
    if remote.is_read_only(path):
        return _state_by_root(path)
    fs, root = filesystem(path)
    if not fs.exists(root):
        return "absent"
    if fs.isfile(root):
        return "file"
    names = {n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(root, detail=False)}
    names = {n for n in names if not is_stray(n) and n != LOCK_NAME}
    if not names:
        return "empty"
    state, doc = root_meta(path)
    if state == "ok":
        return _kind(doc)
    # No readable root: ours only if every entry is a SPINAL name and `hidden` says it is SPINAL's.
    if not names <= set(STORE_ENTRIES):
        return "foreign"
    try:
        hidden = json.loads(fs.cat_file(f"{root}/hidden/zarr.json"))
        return "damaged" if "spinal_dtype" in (hidden.get("attributes") or {}) else "foreign"
    except Exception:
        return "damaged" if names <= {"zarr.json", LOCK_NAME} else "foreign"


def _kind(doc: dict) -> str:
    """'foreign', 'creating' or 'ready' for a readable root zarr.json."""
    meta = (doc.get("attributes") or {}).get(ATTR_KEY)
    if doc.get("node_type") != "group" or not isinstance(meta, dict):
        return "foreign"
    return "creating" if meta.get("state") == "creating" else "ready"


def _state_by_root(path: str) -> str:
    """A location that cannot be listed (HTTP): what its root zarr.json says, or 'absent' without one."""
    state, doc = root_meta(path)
    if state == "missing":
        return "absent"
    return _kind(doc) if state == "ok" else "foreign"


def is_stray(name: str) -> bool:
    """Temporary files of a killed writer: zarr's ``*.partial`` and the lock's ``*.tmp``."""
    return name.endswith(".partial") or name.endswith(".tmp")


def store_exists(path: str) -> bool:
    """A SPINAL store whose creation finished is at ``path``."""
    try:
        return location_state(path) == "ready"
    except (OSError, ValueError):
        return False


def remove_stray(path: str) -> tuple[int, int]:
    """Delete temporary files left by killed writers (call with the writer lock held): (files, bytes)."""
    fs, root = filesystem(path)
    n = size = 0
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return 0, 0
    for name, info in found.items():
        if is_stray(name.rsplit("/", 1)[-1]):
            try:
                fs.rm_file(name)
                n += 1
                size += int(info.get("size") or 0)
            except FileNotFoundError:
                pass
    return n, size
