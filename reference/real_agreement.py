"""SPINAL's numbers on the real SmolLM2 audit against independent float64 references, as markdown.

    .venv/bin/python -m reference.real_agreement [--out out/smollm2-dpo] [--layers 1 10 20 30] [--tokens 256]

- singular values of a layer's centered token matrix: the trace's against a full float64 SVD of the stored rows;
- a: the trace's against an independent weighted least-squares fit (numpy lstsq) of log σ_k on log(k − spikes),
  weights 1/k, in the trace's own window, on the float64 SVD's values;
- L: the trace's per-token Fisher–Rao step against a float64 brute force through the model's own final norm and
  head (the GGUF dequantized by transformers, not SPINAL's lens arrays), ``2·arccos Σ √(p q)``, on a seeded
  subset of the lens tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent


def _rows(store, layer: int) -> np.ndarray:
    return np.concatenate([h for h, _ in store.iter_layer(layer)]).astype(np.float64)


def spectrum_rows(out: Path, label: str, layers: list[int]) -> list[dict]:
    from spinal.store.contract import Store

    meta = json.loads((out / "traces" / label / "trace.json").read_text())
    table = pd.read_parquet(out / "traces" / label / "trace.parquet").set_index("layer")
    spectra = np.load(out / "traces" / label / "spectra.npz")
    store = Store.open(meta["store"])
    res = []
    for layer in layers:
        h = _rows(store, layer)
        sv = np.linalg.svd(h - h.mean(axis=0), compute_uv=False)  # the reference: full float64 SVD
        mine = spectra[str(layer)] if str(layer) in spectra else spectra[f"layer_{layer}"]
        r = min(mine.size, sv.size)
        keep = sv[:r] >= 1e-5 * sv[0]
        row = table.loc[layer]
        k = np.arange(int(row.k_lo), int(row.k_hi) + 1)
        x, y, w = np.log(k - int(row.spikes)), np.log(sv[k - 1]), 1.0 / k
        A = np.stack([np.ones_like(x), x], axis=1) * np.sqrt(w)[:, None]
        slope = np.linalg.lstsq(A, y * np.sqrt(w), rcond=None)[0][1]
        res.append({"layer": layer, "sv_rel": float(np.max(np.abs(mine[:r][keep] - sv[:r][keep]) / sv[:r][keep])),
                    "a": float(row.a), "a_ref": float(-slope), "a_diff": float(abs(row.a + slope))})
    return res


@torch.no_grad()
def transport_rows(out: Path, label: str, layers: list[int], tokens: int) -> list[dict]:
    from spinal.analyze.transport.lens_pass import lens_pass, token_subsample
    from spinal.capture.load import load
    from spinal.store.contract import Store

    meta = json.loads((out / "traces" / label / "trace.json").read_text())
    store = Store.open(meta["store"])
    sub = token_subsample(store, tokens, seed=11)
    steps = sorted({l for l in layers if l + 1 in store.layers})
    mine = lens_pass(meta["store"], (0, int(store.hidden.shape[1])), sorted({*steps, *(s + 1 for s in steps)}),
                     chunk_mib=256, subsample=sub)
    model = load(meta["model"], dtype="float32", device_map="cpu").model.double().eval()
    norm, head = model.model.norm, model.lm_head
    res = []
    for s in steps:
        hp = torch.from_numpy(store.hidden.oindex[store.layer_index(s), sub, :].astype(np.float64))
        hq = torch.from_numpy(store.hidden.oindex[store.layer_index(s + 1), sub, :].astype(np.float64))
        p, q = torch.softmax(head(norm(hp)), -1), torch.softmax(head(norm(hq)), -1)
        ref = (2 * torch.arccos(torch.sqrt(p * q).sum(-1).clamp(max=1.0))).numpy()
        got = _step(mine, s)
        res.append({"step": f"{s}→{s + 1}", "L_mean": float(got.mean()), "L_ref": float(ref.mean()),
                    "max_rel": float(np.max(np.abs(got - ref) / ref))})
    return res


def _step(part, s: int) -> np.ndarray:
    """Per-token L of step s→s+1 from a pass over the sorted layers steps ∪ steps + 1."""
    layers = part.layers
    i = layers.index(s)
    assert layers[i + 1] == s + 1
    return part.steps_L[i].astype(np.float64)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "smollm2-dpo")
    ap.add_argument("--label", default="base")
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 10, 20, 29])
    ap.add_argument("--tokens", type=int, default=256)
    args = ap.parse_args(argv)
    spec = spectrum_rows(args.out, args.label, args.layers)
    tr = transport_rows(args.out, args.label, args.layers, args.tokens)
    lines = [f"Agreement on the real model (`{args.label}` of {args.out.name}; `python -m reference.real_agreement`):", "",
             "| layer | σ_k vs float64 SVD (max rel. diff, σ_k ≥ 1e-5 σ₁) | a | a, independent fit | diff |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['sv_rel']:.1e} | {r['a']:.6f} | {r['a_ref']:.6f} | {r['a_diff']:.1e} |" for r in spec]
    lines += ["", f"| step | mean L (SPINAL) | mean L (float64, model's own norm and head; {args.tokens} tokens) | "
                  "max rel. diff per token |", "|---|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['L_mean']:.6f} | {r['L_ref']:.6f} | {r['max_rel']:.1e} |" for r in tr]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
