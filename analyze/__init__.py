"""Analysis on CPUs only: a store becomes a depth trace (contraction a, transport L per layer); traces are compared
and reported.

Calling the package analyzes a store: ``spinal.analyze(cfg)`` is ``spinal.analyze.trace.analyze(cfg)``."""

from __future__ import annotations

import sys
import types


class _Stage(types.ModuleType):
    """The package, callable as its stage (the one name serves as package and as verb)."""

    def __call__(self, cfg, progress=None, label=None, **kwargs):
        from spinal.analyze.trace import analyze

        return analyze(cfg, progress, label, **kwargs)


sys.modules[__name__].__class__ = _Stage
