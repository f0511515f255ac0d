"""The lock's one small file, created, replaced and moved atomically on a local/NFS path or an fsspec URL.

Through fsspec the lock is created with ``open(…, "xb")``: on S3 a conditional PUT (``If-None-Match: *``), which AWS
S3 and moto honour. A service that ignores the condition would let two writers both "create" it, so each create is
followed by a second exclusive create of the same bytes, which must be refused; where it is not (or where the
filesystem has no exclusive create at all) the writer is refused with one line, before anything is written.
"""

from __future__ import annotations

import os
import uuid

from spinal.errors import StoreError
from spinal.store import remote

LOCK_NAME = "writer_lock"  # <store>/writer_lock/zarr.json: an attribute-only Zarr group


class NoExclusiveCreate(StoreError):
    """The store's filesystem cannot create a file only if it is absent, so one writer cannot be guaranteed."""


class LockFile:
    """The few file operations the lock needs, on a local path or an fsspec URL."""

    def __init__(self, store_path: str):
        self.url = "://" in store_path
        self.store_path = store_path
        self.object_store = remote.is_object_store(store_path)
        if self.url:
            self.fs, root = remote.url_to_fs(store_path)
            self.root = root.rstrip("/")
        else:
            self.fs, self.root = None, os.path.abspath(store_path)
        self.dir = f"{self.root}/{LOCK_NAME}"
        self.path = f"{self.dir}/zarr.json"

    def mkdirs(self) -> None:
        if self.object_store:
            return  # no folders; and s3fs's makedirs would create a missing bucket
        if self.url:
            try:
                self.fs.makedirs(self.dir, exist_ok=True)
            except Exception:
                pass
        else:
            os.makedirs(self.dir, exist_ok=True)

    def read(self, path: str | None = None) -> bytes | None:
        path = path or self.path
        try:
            if self.url:
                with self.fs.open(path, "rb") as f:
                    return f.read()
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def create_exclusive(self, data: bytes) -> bool:
        """Write ``data`` at the lock path only if nothing is there; False if something is."""
        if self.url:
            if not self._create_url(data):
                return False
            if self._create_url(data):  # the same bytes again: a filesystem that ignores "x" accepts this too
                self.fs.rm(self.path)
                raise NoExclusiveCreate(
                    f"{self.store_path}: this object store accepted a second exclusive create of the same object (it "
                    "ignores If-None-Match), so SPINAL cannot keep one writer per store there; capture to a local "
                    "folder and copy the store up (e.g. aws s3 sync), or use a service that honours conditional "
                    "writes (AWS S3 does); nothing was written")
            return True
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:  # the folder went with a release between our steps
            return False
        except OSError:  # link not supported (some FUSE file systems): exclusive create
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            os.unlink(tmp)

    def _create_url(self, data: bytes) -> bool:
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError) as e:  # no exclusive create at all
            raise NoExclusiveCreate(
                f"{self.store_path}: its filesystem ({type(self.fs).__name__}) cannot create a file only if it is "
                f"absent ({e}), so SPINAL cannot keep one writer per store there; capture to a local folder "
                "and copy the store up; nothing was written") from None

    def replace(self, data: bytes) -> None:
        """Rewrite the lock file atomically (heartbeat)."""
        if self.url:
            with self.fs.open(self.path, "wb") as f:
                f.write(data)
            return
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)  # a reader sees the old record or the new, never a torn one

    def move_away(self, expected: bytes) -> bool:
        """Rename the lock to a unique name if it still holds ``expected``; True if this call did it."""
        dest = f"{self.path}.stale-{uuid.uuid4().hex}"
        try:
            if self.url:
                if self.read() != expected:
                    return False
                self.fs.mv(self.path, dest)
            else:
                os.rename(self.path, dest)
        except FileNotFoundError:
            return False
        moved = self.read(dest)
        if self.url:
            self.fs.rm(dest)
        else:
            os.unlink(dest)
        if moved != expected:  # we moved a newer holder's lock: put it back, it is theirs
            if moved is not None:
                self.create_exclusive(moved)
            return False
        return True

    def exists_root(self) -> bool:
        return self.fs.exists(self.root) if self.url else os.path.exists(self.root)

    def remove_root_if_empty(self) -> None:
        if self.object_store:
            return  # no folder to remove (and s3fs's rmdir of a bucket's root deletes the bucket)
        try:
            if self.url:
                if not self.fs.ls(self.root):
                    self.fs.rmdir(self.root)
            else:
                os.rmdir(self.root)  # fails (and is left) unless empty
        except OSError:
            pass

    def remove(self) -> None:
        try:
            if self.url:
                self.fs.rm(self.path)
                if self.fs.exists(self.dir):  # file systems with folders keep an empty one
                    self.fs.rmdir(self.dir)
            else:
                os.unlink(self.path)
                os.rmdir(self.dir)  # an empty folder would show to Zarr as an unknown member
        except OSError:
            pass
