"""Output folders (trace, comparison, report, run) that appear whole or not at all, and are replaced only when
they are recognisably SPINAL's.

Every folder SPINAL writes carries ``spinal-output.json``: its kind, the SHA-256 of every file in it,
and the identity of what it was made from. A folder is written into a hidden temporary sibling and
swapped in by two renames, so a reader sees the old folder whole, the new one whole, or (for the
instant between the renames) nothing, which it refuses clearly; a load checks every digest, so a
torn or mixed folder is refused, never read. ``--overwrite`` replaces a folder only when its marker
(or a v0.1 folder's own key file) says it is of the same kind and it holds nothing else.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from spinal.errors import InputError
from spinal.store.lock import LockedError, StoreLock, is_stale, pid_alive, read_holder

MARKER = "spinal-output.json"
# The key file a v0.1 folder of each kind has (made before the marker existed), and every name SPINAL
# writes at the folder's top level.
LEGACY_KEY = {"trace": "trace.json", "comparison": "compare.json", "report": "report.html", "run": "run.json"}
ENTRIES = {
    "trace": {"trace.parquet", "trace.csv", "trace.json", "bootstrap.parquet", "sequences.parquet", "spectra.npz",
              "jackknife.parquet", "bootstrap_erank.parquet", "bootstrap_rankme.parquet"},
    "comparison": {"compare.parquet", "compare.csv", "compare.json", "series.csv", "positions.parquet", "positions.csv",
                   "depth_position.parquet", "depth_position.csv"},
    "report": {"report.html", "plots"},
    "run": {"run.json", "summary.json", "stores", "traces", "compare", "report", "writer_lock"},
}


def _kind_of(path: Path) -> str | None:
    """The kind recorded in a folder's marker, or implied by a v0.1 key file; None if not SPINAL's."""
    m = path / MARKER
    if m.is_file():
        try:
            return json.loads(m.read_text()).get("kind")
        except (ValueError, OSError):
            return None
    for kind, key in LEGACY_KEY.items():
        if (path / key).is_file():
            return kind
    return None


def check_output(path: str | Path, kind: str, overwrite: bool, flag: str = "--overwrite to replace it",
                 resume: bool = False) -> None:
    """Refuse, before any work, an output location this kind of output may not be written to.

    ``resume`` (run folders): an existing folder of the same kind is to be finished, not replaced.
    """
    p = Path(path)
    if p.is_file():
        raise InputError(f"output {p} is a file; give a folder path for the {kind}")
    entries = [n for n in p.iterdir() if n.name != "writer_lock" and not _ours_tmp(n)] if p.is_dir() else []
    if entries:
        found = _kind_of(p)
        if found != kind:
            what = f"a SPINAL {found} folder" if found else _not_output(p)
            raise InputError(f"{p} exists and is {what}; refusing to write a {kind} there (nothing was touched): "
                             "choose another output folder")
        if resume and not overwrite:
            check_parent_writable(p)
            return
        if not overwrite:
            raise InputError(f"{kind} folder {p} exists; pass {flag}")
        foreign = sorted(n.name for n in entries if n.name not in ENTRIES[kind] | {MARKER})
        if foreign:
            raise InputError(f"{p} is a SPINAL {kind} folder but also holds files SPINAL did not write "
                             f"({', '.join(foreign[:3])}); move them out, then rerun")
    check_parent_writable(p)


def _not_output(p: Path) -> str:
    """What a folder without an output marker is: a SPINAL store is called one."""
    from spinal.store.location import location_state

    try:
        state = location_state(str(p))
    except Exception:  # unreadable: it is still not an output folder
        state = "foreign"
    return ("a SPINAL store (made by `spinal capture`), not an output folder" if state in ("ready", "creating", "damaged")
            else "not a SPINAL output folder")


@contextmanager
def claimed_output(path: str | Path, kind: str, overwrite: bool) -> Iterator[Path]:
    """Check an output location, then hold it for this writer until the block ends, so that a second writer of the
    same output is refused at once, naming the first, before it does any work. The hold is a writer lock (as a
    store's) in a hidden sibling, ``.spinal-writing-NAME/``, removed on release; a killed holder's is taken over."""
    p = Path(path)
    check_output(p, kind, overwrite)
    root = str(p.parent / f".spinal-writing-{p.name}")
    lock = StoreLock(root)
    try:
        if (h := read_holder(root)) is not None and not is_stale(h):
            raise LockedError("held")
        lock.acquire()
        lock.made_root = True  # also a killed holder's, taken over: the hidden folder goes with the hold
    except LockedError:
        h = read_holder(root)
        who = h.describe() if h is not None else "a writer that just finished"
        raise InputError(f"{kind} folder {p} is being written by another SPINAL process ({who}); wait for it to "
                         "finish or choose another output folder (nothing was touched)") from None
    try:
        check_output(p, kind, overwrite)  # a writer that finished while we took the lock
        yield p
    finally:
        lock.release()


def check_parent_writable(p: Path) -> None:
    """Outputs are written beside ``p`` and renamed into place: its folder must be writable."""
    check_writable_dir(p.parent, target=p)


def check_writable_dir(folder: Path, target: Path | None = None) -> None:
    """The nearest existing folder at or above ``folder`` must be a writable folder (else one clear line)."""
    target = target or folder
    probe = folder.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"cannot create {target}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {target}: {probe} is not writable (permission denied)")


def _ours_tmp(n: Path) -> bool:
    return n.name.startswith(".spinal-")


def file_sha256(f: Path) -> str:
    """A file's SHA-256, read 1 MiB at a time."""
    h = hashlib.sha256()
    with f.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_marker(folder: Path, kind: str, identity: dict | None = None, digests: bool = True) -> None:
    """The folder's marker; ``digests``: the SHA-256 of every file (not for a run folder, which keeps
    changing: its parts carry their own markers)."""
    files = {str(f.relative_to(folder)): file_sha256(f) for f in sorted(folder.rglob("*"))
             if digests and f.is_file() and f.name != MARKER}
    doc = {"kind": kind, "marker_format": 1, "identity": identity or {}, "files": files,
           "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, folder / MARKER)


def check_whole(folder: str | Path, kind: str) -> dict:
    """Verify a folder's marker and every digest in it; return the marker (empty dict for a v0.1 folder)."""
    p = Path(folder)
    m = p / MARKER
    if not m.is_file():
        return {}
    try:
        doc = json.loads(m.read_text())
    except (ValueError, OSError) as e:
        raise InputError(f"{p}: its {MARKER} cannot be read ({e}); rewrite the {kind} with --overwrite") from None
    if doc.get("kind") != kind:
        raise InputError(f"{p} is a SPINAL {doc.get('kind')} folder, not a {kind} folder")
    for name, digest in doc.get("files", {}).items():
        f = p / name
        if not f.is_file():
            raise InputError(f"{p}: {name} is missing (the {kind} is incomplete); rewrite it with --overwrite")
        if file_sha256(f) != digest:
            raise InputError(f"{p}: {name} does not match the digest recorded when it was written (damaged or "
                             f"changed since); rewrite the {kind} with --overwrite")
    return doc


@contextmanager
def atomic_folder(final: str | Path, kind: str, identity: dict | None = None) -> Iterator[Path]:
    """Yield a temporary sibling to write into; on success, mark it and swap it in for ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(final)
    tmp = final.parent / f".spinal-new-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        write_marker(tmp, kind, identity)
        swap_in(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def swap_in(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp`` with two renames; the old folder is deleted only after the new one is in."""
    old = None
    if final.exists():
        old = final.parent / f".spinal-old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def move_aside(final: Path) -> None:
    """Take a whole folder out of the way (atomic rename), then delete it."""
    old = final.parent / f".spinal-old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(final, old)
    shutil.rmtree(old, ignore_errors=True)


def _clean_leftovers(final: Path) -> None:
    """Temporary siblings of ``final`` left by killed writers. An old folder left between the two renames
    is put back when the final name is empty (the kill landed in between), else deleted."""
    pattern = re.compile(rf"\.spinal-(new|old)-{re.escape(final.name)}-(\d+)-[0-9a-f]{{8}}")
    for n in final.parent.iterdir():
        m = pattern.fullmatch(n.name)
        if m is None:
            continue
        pid = int(m.group(2))
        if pid != os.getpid() and pid_alive(pid):
            continue  # another live process's work in progress
        if m.group(1) == "old" and not final.exists():
            os.rename(n, final)
        else:
            shutil.rmtree(n, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


def jsonable(o):
    """``json.dumps(default=…)`` for numpy values (NaN as null, which every JSON reader accepts)."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if math.isnan(float(o)) else float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for results that say which machine made them; else its architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
