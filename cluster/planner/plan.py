"""`spinal plan`: replicas, device maps, store size and time for a capture, worked out from a model config alone.

The model is built on the meta device (cluster/planner/presets.py), so planning a 70B capture needs
no weights and no GPU. Placement (placement.py) runs accelerate's device-map inference as
capture does; sizes and times (cost.py) follow the store contract and the throughput
assumptions in ``PlanConfig`` (config.py), which ``Plan.render`` (text.py) prints so a
user can change them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from spinal.cluster.planner.config import PlanConfig
from spinal.cluster.planner.cost import (AnalysisCost, CaptureTime, CompareCost, StoreSize, analysis_cost, capture_time,
                                         compare_cost, store_size)
from spinal.cluster.planner.placement import Placement, place
from spinal.cluster.planner.text import render
from spinal.cluster.planner.presets import MetaModel, ModelFacts, build_meta_model, model_facts, resolve_config
from spinal.errors import InputError

__all__ = ["Plan", "PlanConfig", "plan"]


@dataclass(frozen=True)
class Plan:
    """One capture's plan: the config, the model's facts, placement, store size, capture time, analysis cost per
    checkpoint and the comparison's cost."""

    config: PlanConfig
    model: ModelFacts
    placement: Placement
    store: StoreSize
    capture: CaptureTime
    analysis: AnalysisCost
    comparison: CompareCost

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def render(self) -> str:
        """Human-readable plan, every assumption with its value."""
        return render(self.config, self.model, self.placement, self.store, self.capture, self.analysis,
                      self.comparison)


def plan(cfg: PlanConfig, meta: MetaModel | None = None) -> Plan:
    """Plan a capture and its analysis. ``meta``: a model already built from ``cfg.model`` (tests reuse one)."""
    if meta is None:
        meta = build_meta_model(cfg.model, cfg.dtype, cfg.revision)
    elif resolve_config(cfg.model, cfg.revision)[1] != meta.source or cfg.dtype not in ("auto", meta.dtype):
        raise InputError(f"model={cfg.model!r}, dtype={cfg.dtype!r} but the meta model given is {meta.source} "
                         f"in {meta.dtype}")
    facts = model_facts(meta)
    placement = place(cfg, meta, facts)
    store = store_size(cfg, facts)
    return Plan(cfg, facts, placement, store, capture_time(cfg, meta, facts, placement, store),
                analysis_cost(cfg, facts, store), compare_cost(cfg, facts, store))
