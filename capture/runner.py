"""Capture one checkpoint × one prompt set into a store: prepare a session, then run the units not done yet, each
unit's write overlapping the next unit's forward pass."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from spinal.capture.load import Loaded
from spinal.capture.session import Session, prepare, write_unit
from spinal.config import CaptureConfig

Progress = Callable[[int, int], None]  # (stored tokens done, total)


@dataclass(frozen=True)
class CaptureResult:
    path: str
    units_written: int
    units_skipped: int
    tokens: int  # stored tokens of the whole store
    seconds: float
    self_check: dict | None
    tokens_written: int = 0  # by this call (a resume of a finished store writes none)
    prompts: dict | None = None  # how the prompt set was read (the store's prompts/source)

    def summary(self) -> str:
        """One line for the terminal: what this call wrote, its rate only when it wrote something, and how the
        prompts were read when they were not SPINAL's own prompt[/response] rows."""
        units = f"{self.units_written} unit{'s' * (self.units_written != 1)}"
        done = f" ({self.units_skipped} already done)" if self.units_skipped else ""
        rate = (f", {self.tokens_written / self.seconds:,.0f} tok/s" if self.tokens_written and self.seconds
                else "")
        return (f"wrote {units}{done} to {self.path}: {self.tokens_written:,} of {self.tokens:,} tokens, "
                f"{self.seconds:.1f} s{rate}{prompts_text(self.prompts)}")


def prompts_text(source: dict | None) -> str:
    """The summary's tail "; prompts: LAYOUT, reply SIDE, N of M rows; columns not used: […]" for a prompt set read
    from a dataset or in a recognised layout; nothing for plain prompt files (as before datasets were read)."""
    plain = source and source.get("kind") == "file" and source.get("layout") in PLAIN
    if not source or (plain and not source.get("columns_unused")):
        return ""
    parts = [f"; prompts: {source.get('layout')}"]
    if source.get("kind") not in (None, "file"):
        parts.append(f" from {source['kind']}" + (f" split {source['split']!r}" if source.get("split") else "")
                     + (f" at {source['revision'][:12]}" if source.get("revision") else ""))
    if source.get("reply"):
        parts.append(f", reply {source['reply']}")
    if source.get("selection"):
        s = source["selection"]
        picked = f"first {s['limit']}" if s["limit"] else f"sample of {s['sample']} (seed {s['seed']})"
        parts.append(f", {picked} of {s['of']} rows")
    if source.get("columns_unused"):
        parts.append(f"; columns not used: {source['columns_unused']}")
    return "".join(parts)


PLAIN = ("prompt", "prompt + response", "text lines")


def capture(cfg: CaptureConfig, progress: Progress | None = None, loaded: Loaded | None = None
            ) -> CaptureResult | dict[str, CaptureResult]:
    """Run a capture in this process. Every check that can refuse runs before an existing store is touched.
    With ``reply='both'`` (a preference dataset) it is two captures, one per side, returned by side."""
    if cfg.reply == "both":
        return {c.reply: capture(c, progress, loaded) for c in cfg.sides()}
    session = prepare(cfg, loaded)
    try:
        return _run_units(session, progress)
    finally:
        session.close()


def _run_units(session: Session, progress: Progress | None) -> CaptureResult:
    """Capture the units not done yet; each unit's write overlaps the next unit's forward pass.

    One writer thread, at most one write in flight: before the next unit is handed over, the previous
    write must have finished (its error stops the run there). A unit is marked done only after all
    its shards are written (``Store.write_unit``), in the order the units were captured.
    """
    store, layout = session.store, session.layout
    done = store.done()
    todo = [u for u in layout.units if not done[u.index]]
    total = int(layout.lengths.sum())
    finished = sum(layout.stored_tokens(u) for u in layout.units if done[u.index])
    if progress:
        progress(finished, total)
    t0 = time.perf_counter()
    writing: Future | None = None
    # leaving the block, also on an error, waits for the write in flight
    # two blocks in turn: one is filled while the other is written; unit i's buffer was unit i − 2's, whose write
    # finished before unit i − 1's was handed over
    buffers = [session.unit_capture.new_buffer() for _ in range(min(2, len(todo)))]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spinal-writer") as writer, session.recorder() as rec:
        for i, unit in enumerate(todo):
            block = session.unit_capture.block(unit, rec, buffers[i % 2])
            if writing is not None:
                writing.result()  # the previous unit's write has finished (or its error stops the run here)
            writing = writer.submit(write_unit, store, unit, block, session.write_pool, session.cfg.direct_io)
            finished += layout.stored_tokens(unit)
            if progress:
                progress(finished, total)
        if writing is not None:
            writing.result()
    store.mark_complete()
    return CaptureResult(store.path, len(todo), len(layout.units) - len(todo), total, time.perf_counter() - t0,
                         session.check, sum(layout.stored_tokens(u) for u in todo),
                         store.meta.get("prompts", {}).get("source"))
