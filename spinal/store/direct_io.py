"""A file written whole or not at all, through a temporary name and a rename, with ``O_DIRECT`` past the page cache
where the file system takes it.

With ``direct`` (the capture's default) the pieces are copied into a reused page-aligned buffer and go to the disk
without the page cache, which a store growing by gigabytes would otherwise keep finding fresh pages in (measured in
docs/benchmarks.md, "Store writes"). Where ``O_DIRECT`` is refused (tmpfs, some network file systems, macOS), the
file is written with one buffered ``writev`` of its pieces instead.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

ALIGN = 4096  # O_DIRECT's alignment of buffer address, file offset and length (the largest logical block size)
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)  # what a file system says when it does not take O_DIRECT
_free: list[mmap.mmap] = []  # page-aligned scratch buffers, reused from shard to shard and call to call
_free_lock = threading.Lock()


@contextmanager
def _aligned_buffer(size: int) -> Iterator[memoryview]:
    """A page-aligned scratch buffer of at least ``size`` bytes, taken from the free list and put back after (a
    fresh one per shard would cost the page faults O_DIRECT avoids; writer threads come and go with each unit)."""
    with _free_lock:
        buf = _free.pop() if _free else None
    if buf is None or len(buf) < size:
        buf = mmap.mmap(-1, max(size, 8 << 20))  # anonymous mappings are page-aligned
    try:
        yield memoryview(buf)
    finally:
        with _free_lock:
            _free.append(buf)


def write_file(path: Path, pieces: list, direct: bool = True) -> str:
    """Write ``pieces`` to ``path`` through a temporary name in the same folder and a rename (zarr does the same):
    a shard file is either whole or absent, never torn. Returns how it was written: "direct" (``O_DIRECT``,
    when asked for and the file system takes it) or "buffered"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    views = [memoryview(p).cast("B") for p in pieces]
    try:
        if direct and hasattr(os, "O_DIRECT") and _write_direct(tmp, views):
            how = "direct"
        else:
            _write_buffered(tmp, views)
            how = "buffered"
        os.replace(tmp, path)
        return how
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_direct(tmp: Path, views: list) -> bool:
    """The pieces, copied into one aligned buffer, written with O_DIRECT and cut to their length; False (nothing
    left at ``tmp``) when the file system refuses O_DIRECT."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError as e:
        if e.errno in _REFUSED:
            return False
        raise
    total = sum(v.nbytes for v in views)
    size = -(-total // ALIGN) * ALIGN
    done, refused = 0, False
    try:
        with _aligned_buffer(size) as buf:
            flat, offset = np.frombuffer(buf, np.uint8), 0
            for v in views:
                if v.nbytes >= 1 << 16:  # numpy's copy releases the GIL, a memoryview assignment does not
                    np.copyto(flat[offset : offset + v.nbytes], np.frombuffer(v, np.uint8))
                else:
                    buf[offset : offset + v.nbytes] = v
                offset += v.nbytes
            while done < size:
                n = os.write(fd, buf[done:size])  # a short write stays aligned: it ends on a block (ENOSPC next)
                if n <= 0 or n % ALIGN:
                    raise OSError(errno.EIO, f"O_DIRECT write of {tmp} returned {n} bytes")
                done += n
        os.ftruncate(fd, total)  # the padding past the last piece goes
    except OSError as e:
        if e.errno not in _REFUSED or done:
            raise
        refused = True  # opened, but the write itself refused: the caller writes it buffered instead
    finally:
        os.close(fd)
    if refused:
        tmp.unlink(missing_ok=True)
    return not refused


def _write_buffered(tmp: Path, views: list) -> None:
    """One ``writev`` of the pieces through the page cache (looping over short writes)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while views:
            n = os.writev(fd, views)
            while views and n >= views[0].nbytes:  # a short write (a full disk says ENOSPC on the next call)
                n -= views[0].nbytes
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]
    finally:
        os.close(fd)
