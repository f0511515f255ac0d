"""The background analysis of a training audit: a separate process that traces each captured step and extends
the series while the trainer trains, restarted when it dies.

    python -m spinal.monitor.worker AUDIT_FOLDER --parent PID

It reads its options from AUDIT_FOLDER/monitor.json, runs audit rounds until the trainer writes
``training-ended`` (or its parent process is gone) and nothing is left, and writes what it did to ``worker.log``.
Everything it writes is whole or absent, so a worker killed at any moment is simply started again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from spinal.monitor.audit import audit_round, refresh_report
from spinal.monitor.config import from_record
from spinal.monitor.folder import AuditFolder

log = logging.getLogger(__name__)
RESTARTS = 3  # a worker that dies more often than this is reported, and training goes on without it


class Worker:
    """The trainer's handle on its background worker: start, notice a death and restart, finish."""

    def __init__(self, folder: AuditFolder):
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.gave_up = False

    def start(self) -> None:
        logf = open(self.folder.root / "worker.log", "ab")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen([sys.executable, "-m", "spinal.monitor.worker", str(self.folder.root),
                                      "--parent", str(os.getpid())], stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        logf.close()

    def check(self) -> str | None:
        """Restart a worker that died; returns a warning to show, once per event (None: all is well)."""
        if self.proc is None or self.gave_up or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        if code == 0 and not self.folder.done_file.exists():
            code = "exited early"
        if code == 0:
            return None
        if self.restarts >= RESTARTS:
            self.gave_up = True
            return (f"the background analysis died {self.restarts + 1} times (last: {self._why(code)}); training "
                    f"goes on and every save is still captured; see {self.folder.root / 'worker.log'} and audit "
                    f"the stores afterwards with `spinal watch … --once`")
        self.restarts += 1
        self.start()
        return f"the background analysis died ({self._why(code)}); restarted it ({self.restarts} of {RESTARTS})"

    @staticmethod
    def _why(code) -> str:
        if isinstance(code, int) and code < 0:
            return f"signal {signal.Signals(-code).name}"
        return f"exit code {code}" if isinstance(code, int) else str(code)

    def finish(self, timeout: float | None) -> bool:
        """Tell the worker training has ended and wait up to ``timeout`` s for it to finish what is left."""
        self.folder.done_file.write_text("")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.proc is not None and not self.gave_up:
            try:
                self.proc.wait(timeout=1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                continue
            if self.check() is None:
                return True
        return not self.gave_up


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spinal.monitor.worker")
    ap.add_argument("folder")
    ap.add_argument("--parent", type=int, default=0)
    ap.add_argument("--poll", type=float, default=0.5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    folder = AuditFolder(Path(args.folder))
    cfg = from_record(json.loads((folder.root / "monitor.json").read_text())["options"], args.folder)
    stale = False  # steps audited that the report does not show yet
    while True:
        orphaned = bool(args.parent) and os.getppid() != args.parent  # the trainer is gone: finish and stop
        ending = folder.done_file.exists() or orphaned
        rows = audit_round(folder, cfg)
        for r in rows:
            log.info("audited %s: %s", r["label"], "DESTABILIZED: " + r["reason"] if r["destabilized"] else "ok")
        behind = rows and set(folder.captured_steps()) - {r["step"] for r in folder.read_series()}
        if (rows or stale) and not behind:  # caught up: draw the report once for the steps just audited
            refresh_report(folder)
            stale = False
        elif rows:
            stale = True
        if ending and not rows and not stale:
            return 0
        if not rows:
            time.sleep(args.poll)


if __name__ == "__main__":
    sys.exit(main())
