"""The audit folder of a watched training run: one store and one trace per audited step, the series so far, and the
record that ties the folder to one probe and one set of options.

```
OUT/monitor.json             the options (MonitorConfig.record) and the run's identity; a restart must match it
OUT/stores/reference.zarr    the reference (the model before training, or the one named)
OUT/stores/step-000175.zarr  one store per audited step, named by the training step
OUT/traces/…                 one trace per store, same names
OUT/compare/, OUT/report/    the series comparison and its report, replaced whole as the run grows
OUT/series.jsonl             one line per audited step: its numbers and the destabilization flag
OUT/captures.jsonl           the callback's: one line per save, the seconds its capture took from training
```

A step is audited once: its store is captured (or finished) only while it has no trace, and its trace is written
only whole (analyze/trace_format.py), so a killed writer redoes exactly the step it was on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from spinal.errors import InputError
from spinal.outputs import write_text_atomic
from spinal.store.contract import Store
from spinal.store.location import store_exists
from spinal.store.lockfile import LOCK_NAME

REFERENCE = "reference"
_STEP = re.compile(r"step-(\d{6,})")


def label(step: int | None) -> str:
    """The name of a step's store and trace: ``step-000175``; None is the reference."""
    return REFERENCE if step is None else f"step-{step:06d}"


@dataclass(frozen=True)
class AuditFolder:
    root: Path

    def store(self, step: int | None) -> str:
        return str(self.root / "stores" / f"{label(step)}.zarr")

    def trace(self, step: int | None) -> Path:
        return self.root / "traces" / label(step)

    @property
    def series_file(self) -> Path:
        return self.root / "series.jsonl"

    @property
    def done_file(self) -> Path:
        """Written when training ends: the background worker finishes what is left, then exits."""
        return self.root / "training-ended"

    def complete(self, step: int | None) -> bool:
        s = self.store(step)
        return store_exists(s) and Store.open(s).complete

    def captured_steps(self) -> list[int]:
        """The training steps with a complete store, in order (the reference not included)."""
        stores = self.root / "stores"
        steps = sorted(int(m.group(1)) for p in (stores.iterdir() if stores.is_dir() else ())
                       if (m := _STEP.fullmatch(p.name.removesuffix(".zarr"))))
        return [s for s in steps if self.complete(s)]

    def read_series(self) -> list[dict]:
        if not self.series_file.exists():
            return []
        return [json.loads(line) for line in self.series_file.read_text().splitlines() if line.strip()]

    def write_series(self, rows: list[dict]) -> None:
        write_text_atomic(self.series_file, "".join(json.dumps(r, default=str) + "\n" for r in rows))

    def bind(self, record: dict) -> None:
        """Create the folder with its record, or check an existing one was made with the same options: a
        restarted run continues its own audit, never one made with another probe or other options."""
        self.root.mkdir(parents=True, exist_ok=True)
        f = self.root / "monitor.json"
        if f.exists():
            try:
                old = json.loads(f.read_text())
            except ValueError:
                raise InputError(f"{f} cannot be read; give another audit folder (out)") from None
            diff = [k for k in sorted(set(old) | set(record)) if old.get(k) != record.get(k)]
            if diff:
                raise InputError(f"{self.root} holds an audit made with other options ({', '.join(diff[:4])} "
                                 "differ); give another audit folder (out), or delete this one to start again")
            return
        if any(p.name != LOCK_NAME for p in self.root.iterdir()):
            raise InputError(f"{self.root} is not empty and holds no monitor.json: not a SPINAL audit folder; "
                             "give another (out)")
        write_text_atomic(f, json.dumps(record, indent=2, default=str))
