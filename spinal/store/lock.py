"""One writer per store: a lock file inside the store, held for the life of a writer.

The lock is ``<store>/writer_lock/``: an attribute-only Zarr group (so Zarr and xarray readers
listing the store see a valid, empty member) whose ``zarr.json`` holds ``{host, pid, started,
since, heartbeat, token}`` under the ``spinal_lock`` attribute.
It is taken atomically: ``link(2)`` of a private file onto the lock name on a local or NFS
path (the NFS-safe way: ``O_EXCL`` is not atomic on every NFS client), and an exclusive-create
``open(…, "xb")`` through fsspec for URLs. The holder refreshes the file's ``heartbeat`` every
``HEARTBEAT_S`` seconds from a daemon thread.

A lock left by a dead writer is taken over, with a warning naming it: on the same host when
its pid is gone (or was reused by another process: the recorded start time differs); on
another host when its heartbeat is older than ``STALE_S``. Two processes that find the same
stale lock race on renaming it away; only one wins, the other sees the winner's lock.

Ray replicas of one capture do not take the lock: the driver holds it and passes its token,
and each replica checks the token is still the one on disk before it writes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from spinal.errors import StoreError
from spinal.store.lockfile import LockFile

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
STALE_S = 60.0  # a holder on another host that has not refreshed for this long is dead


class LockedError(StoreError):
    """Another live writer holds the store."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float | None  # the holder process's start time (pid reuse guard), None if unknown
    since: float
    heartbeat: float
    token: str

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {when}"


def _proc_start(pid: int) -> float | None:
    try:
        import psutil

        return round(psutil.Process(pid).create_time(), 2)
    except Exception:
        return None


def pid_alive(pid: int, started: float | None = None) -> bool:
    """The process runs (not a zombie); with ``started``, it is the same process that recorded it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if started is not None:
        now = _proc_start(pid)
        if now is not None and abs(now - started) > 1.0:
            return False  # the pid was reused by another process
    try:  # a zombie (killed, not yet reaped) holds nothing
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return True


def read_holder(store_path: str) -> Holder | None:
    raw = LockFile(store_path).read()
    return _parse(raw)


def _parse(raw: bytes | None) -> Holder | None:
    if raw is None:
        return None
    try:
        d = json.loads(raw)["attributes"]["spinal_lock"]
        return Holder(str(d["host"]), int(d["pid"]), d.get("started"), float(d["since"]),
                      float(d.get("heartbeat", d["since"])), str(d["token"]))
    except Exception:  # a torn or foreign lock file: treat as held since its mtime by an unknown writer
        return Holder("?", -1, None, 0.0, 0.0, "?")


def is_stale(h: Holder) -> bool:
    if h.host == socket.gethostname() and h.pid > 0:
        return not pid_alive(h.pid, h.started)
    return time.time() - h.heartbeat > STALE_S


class StoreLock:
    """Hold ``<store>/writer_lock``; ``with StoreLock(path):`` or ``acquire()`` / ``release()``."""

    def __init__(self, store_path: str):
        self.store_path = store_path
        self.fs = LockFile(store_path)
        self.token = uuid.uuid4().hex
        self.since = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False
        self.made_root = False

    def _record(self) -> bytes:
        pid = os.getpid()
        rec = {"host": socket.gethostname(), "pid": pid, "started": _proc_start(pid), "since": self.since,
               "heartbeat": time.time(), "token": self.token}
        return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"spinal_lock": rec}},
                          indent=2).encode()

    def acquire(self) -> "StoreLock":
        self.made_root = not self.fs.exists_root()
        self.fs.mkdirs()
        for _ in range(20):
            if self.fs.create_exclusive(self._record()):
                self.held = True
                self._thread = threading.Thread(target=self._beat, name="spinal-lock", daemon=True)
                self._thread.start()
                return self
            raw = self.fs.read()
            holder = _parse(raw)
            if holder is None:
                self.fs.mkdirs()
                continue  # released between our two steps: try again
            if not is_stale(holder):
                refuse_if_held(self.store_path)
            if self.fs.move_away(raw):
                log.warning("took over the lock of %s from a writer that is gone (%s)", self.store_path,
                            holder.describe())
        raise LockedError(f"{self.store_path}: could not take the writer lock (it keeps changing hands)")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                h = _parse(self.fs.read())
                if h is None or h.token != self.token:
                    return  # taken over (we were presumed dead): never write over the new holder
                self.fs.replace(self._record())
            except Exception:  # a missed heartbeat only makes a remote takeover earlier
                pass

    def check(self) -> None:
        """Raise unless this lock is still the one on disk (before a destructive step)."""
        check_token(self.store_path, self.token)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.held:
            h = read_holder(self.store_path)
            if h is not None and h.token == self.token:
                self.fs.remove()
                if self.made_root:
                    self.fs.remove_root_if_empty()  # a refused run leaves no empty folder behind
        self.held = False

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_if_held(store_path: str) -> None:
    """Fail fast, before a model is loaded, when a live writer holds the store (the lock is taken later)."""
    h = read_holder(store_path)
    if h is not None and not is_stale(h):
        raise LockedError(f"{store_path} is being written by another SPINAL process ({h.describe()}); "
                          "wait for it to finish or stop it, then rerun with --resume")


def check_token(store_path: str, token: str) -> None:
    """A Ray replica's check that the driver holding ``token`` still owns the store."""
    h = read_holder(store_path)
    if h is None or h.token != token:
        who = "nobody" if h is None else h.describe()
        raise LockedError(f"{store_path}: the capture's writer lock is no longer held by this run "
                          f"(now: {who}); stop and rerun with --resume")
