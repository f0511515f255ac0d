"""Watch a training run: audit every save while it trains (SpinalCallback) or as its checkpoints appear
(`spinal watch`), and raise the destabilization flag when it happens."""

from __future__ import annotations

__all__ = ["SpinalCallback", "MonitorConfig", "monitor_config", "load_monitor_config", "watch"]


def __getattr__(name: str):
    if name == "SpinalCallback":
        from spinal.monitor.callback import SpinalCallback

        return SpinalCallback
    if name in ("MonitorConfig", "monitor_config", "load_monitor_config"):
        from spinal.monitor import config

        return getattr(config, name)
    if name == "watch":
        from spinal.monitor.watch import watch

        return watch
    raise AttributeError(f"module 'spinal.monitor' has no attribute {name!r}")
