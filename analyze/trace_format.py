"""A checkpoint's depth trace (Trace): one table row per layer with what comparisons pair, kept as a folder that is
written whole or not at all (TRACE_FORMAT)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spinal.analyze.contraction.layer_spectrum import Replicates, paired_replicates
from spinal.analyze.contraction.ranks import NAMES as RANKS
from spinal.errors import InputError
from spinal.outputs import atomic_folder, check_output, check_whole, jsonable

TRACE_FORMAT = 5  # 2: first-order bootstrap replicates (analyze/contraction/influence.py), L_se, L_precision; 3: their spread
# calibrated where N ≤ 8·d (analyze/contraction/calibration.py), se_scale; 4: there set to a calibrated exact jackknife's,
# se_jackknife, kappa (pooled over the layers), kappa_layer; 5: effective rank, RankMe (columns and replicates,
# bootstrap_<name>.parquet) and alpha_req. Older traces load without them (their columns read as absent).
RANK_FILES = {name: f"bootstrap_{name}.parquet" for name in RANKS}


@dataclass(frozen=True)
class Trace:
    """A checkpoint's depth trace: ``table`` has one row per layer; ``boot`` and ``seq_L`` feed comparisons."""

    table: pd.DataFrame  # layer, a, a_lo, a_hi, … (see docs/usage.md, "Trace format")
    meta: dict
    boot: np.ndarray  # (layer, n_boot) bootstrap replicates of a (paired across checkpoints by seed)
    seq_L: np.ndarray  # (sequence, step) mean L per sequence for step ℓ→ℓ+1 (NaN: no tokens)
    spectra: dict[int, np.ndarray]  # layer -> centered singular values (for plots)
    # (layer, block) â without each sequence block, where N ≤ 8·d (empty otherwise): the paired exact jackknife
    jackknife: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    # name ("erank", "rankme") -> (layer, n_boot) first-order replicates on boot's block draws (from trace format 5)
    rank_boot: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.meta.get("label") or Path(self.meta["store"]).stem

    @property
    def identity(self) -> dict:
        """What this trace was made from: comparisons and reports check their inputs against it."""
        return {"label": self.label, "tokens_sha256": self.meta.get("tokens_sha256"),
                "weights_fingerprint": self.meta.get("weights_fingerprint"),
                "store_identity": self.meta.get("store_identity"), "created": self.meta.get("created"),
                "trace_id": self.meta.get("trace_id")}

    def paired_boot(self, other: "Trace") -> np.ndarray:
        """(layer, n_boot) replicates of Δa = other.a − self.a, paired by block draws (one seed: replicate b drew
        the same blocks in both). Where both hold leave-one-out values (N ≤ 8·d) each layer's are rescaled about
        Δa to κ times the paired exact jackknife's SE (analyze/contraction/calibration.py ``paired``)."""
        rep = other.boot - self.boot
        if not (rep.size and self.jackknife.size and self.jackknife.shape == other.jackknife.shape):
            return rep
        groups = int(self.meta.get("blocks_used") or 0)
        return np.stack([paired_replicates(self.replicates(i), other.replicates(i), groups)
                         for i in range(rep.shape[0])])

    def replicates(self, i: int) -> Replicates:
        """Row ``i``'s â, bootstrap replicates, leave-one-out values and κ, as ``paired_boot`` pairs them."""
        return Replicates(self.table["a"].to_numpy()[i], self.boot[i], self.jackknife[i],
                          self.table["kappa"].to_numpy()[i])

    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the trace folder whole or not at all (temporary sibling, swapped in)."""
        out = Path(out)
        check_output(out, "trace", overwrite)
        with atomic_folder(out, "trace", self.identity) as tmp:
            self.table.to_parquet(tmp / "trace.parquet", index=False)
            self.table.to_csv(tmp / "trace.csv", index=False)
            layers = self.table["layer"].to_numpy()
            pd.DataFrame(self.boot.T, columns=[str(l) for l in layers]).to_parquet(tmp / "bootstrap.parquet")
            steps = [f"{a}->{b}" for a, b in zip(layers[:-1], layers[1:])]
            pd.DataFrame(self.seq_L, columns=steps).to_parquet(tmp / "sequences.parquet")
            np.savez_compressed(tmp / "spectra.npz", **{str(k): v for k, v in self.spectra.items()})
            for name, rep in self.rank_boot.items():
                pd.DataFrame(rep.T, columns=[str(l) for l in layers]).to_parquet(tmp / RANK_FILES[name])
            if self.jackknife.size:
                pd.DataFrame(self.jackknife.T, columns=[str(l) for l in layers]).to_parquet(tmp / "jackknife.parquet")
            (tmp / "trace.json").write_text(json.dumps(self.meta, indent=2, default=jsonable))
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        p = Path(path)
        if not p.is_dir():
            raise InputError(f"{p} is not a trace folder ({'a file' if p.exists() else 'nothing is there'}); "
                             "make one with `spinal analyze`")
        if not (p / "trace.json").exists():
            raise InputError(f"{p} is not a trace folder (no trace.json); make one with `spinal analyze`")
        try:
            meta = json.loads((p / "trace.json").read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{p}/trace.json cannot be read ({e}); rerun `spinal analyze … --overwrite`") from None
        v = meta.get("trace_format") if isinstance(meta, dict) else None
        if not isinstance(v, int) or v > TRACE_FORMAT:
            raise InputError(f"{p} has trace format {v}; this SPINAL reads ≤ {TRACE_FORMAT}: upgrade spinal")
        check_whole(p, "trace")
        name = "trace.parquet"
        try:
            table = pd.read_parquet(p / name)
            name = "bootstrap.parquet"
            boot = pd.read_parquet(p / name).to_numpy().T
            name = "sequences.parquet"
            seq_L = pd.read_parquet(p / name).to_numpy()
            name = "spectra.npz"
            with np.load(p / name) as z:
                spectra = {int(k): z[k] for k in z.files}
            name = "jackknife.parquet"  # only where N ≤ 8·d (and from trace format 4)
            jackknife = pd.read_parquet(p / name).to_numpy().T if (p / name).exists() else np.zeros((0, 0))
            rank_boot = {}
            for rank, name in RANK_FILES.items():  # from trace format 5
                if (p / name).exists():
                    rank_boot[rank] = pd.read_parquet(p / name).to_numpy().T
        except Exception as e:  # missing or torn file of a folder without digests (SPINAL 0.1)
            why = "is missing" if not (p / name).exists() else f"cannot be read ({type(e).__name__})"
            raise InputError(f"{p}: {name} {why}; rerun `spinal analyze … --overwrite`") from None
        missing = {"layer", "a", "a_lo", "a_hi", "L_mean", "status"} - set(table.columns)
        if missing or len(table) != len(meta.get("layers", table)) or boot.shape[0] != len(table):
            raise InputError(f"{p}: its files do not belong together (columns missing: {sorted(missing)}, "
                             f"{len(table)} table rows, {boot.shape[0]} bootstrap rows); rerun `spinal analyze`")
        if jackknife.size and jackknife.shape[0] != len(table):
            raise InputError(f"{p}: jackknife.parquet has {jackknife.shape[0]} layers, the table {len(table)}; "
                             "rerun `spinal analyze … --overwrite`")
        if any(r.shape[0] != len(table) for r in rank_boot.values()):
            raise InputError(f"{p}: its rank replicates do not have the table's {len(table)} layers; "
                             "rerun `spinal analyze … --overwrite`")
        return cls(table, meta, boot, seq_L, spectra, jackknife, rank_boot)
