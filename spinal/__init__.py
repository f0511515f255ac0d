"""SPINAL: capture layer-wise activations into Zarr and audit where preference alignment acts across depth.

The public API, for notebooks and scripts (each name is imported on first use, so ``import spinal`` stays light)::

    import spinal

    spinal.capture(spinal.CaptureConfig(model="path/to/base", prompts="prompts.jsonl", out="base.zarr"))
    base = spinal.analyze(spinal.AnalyzeConfig(store="base.zarr", out="base-trace"))  # -> Trace (trace.save)
    result = spinal.compare([base, dpo], stores=["base.zarr", "dpo.zarr"])    # -> Comparison, as `spinal compare`
    spinal.report([base, dpo], result, "report/")                              # -> path of report.html

``spinal.capture`` and ``spinal.analyze`` are also the names of the two stage packages: calling the package runs
the stage (``spinal.capture(cfg)`` is ``spinal.capture.capture(cfg)``), so both readings of the name work.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> (module, attribute); None: the module itself (the callable stage packages)
_API = {
    "capture": ("spinal.capture", None),
    "analyze": ("spinal.analyze", None),
    "compare": ("spinal.api", "compare"),
    "report": ("spinal.api", "report"),
    "run": ("spinal.api", "run"),
    "load_run_config": ("spinal.config", "load_run_config"),
    "Store": ("spinal.store.contract", "Store"),
    "Trace": ("spinal.analyze.trace", "Trace"),
    "Comparison": ("spinal.analyze.compare.comparison", "Comparison"),
    "CaptureResult": ("spinal.capture.runner", "CaptureResult"),
    "CaptureConfig": ("spinal.config", "CaptureConfig"),
    "AnalyzeConfig": ("spinal.config", "AnalyzeConfig"),
    "CompareConfig": ("spinal.config", "CompareConfig"),
    "ClusterConfig": ("spinal.config", "ClusterConfig"),
    "RunConfig": ("spinal.config", "RunConfig"),
    "SpinalError": ("spinal.errors", "SpinalError"),
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'spinal' has no attribute {name!r}")
    module, attr = _API[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
