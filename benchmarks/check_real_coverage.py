"""Whether a's interval is right on a real model's layers: sd(â) over disjoint real subsamples against the SE each
subsample's own interval uses, and how often those intervals cover the subsamples' mean â.

The store is one corpus; the first ~220-character piece of each distinct paragraph is one independent unit, and
the units are dealt into G disjoint groups of equal token counts (each group one "audit" of N tokens, its units
dealt into 16 blocks of equal token counts, as a store's sequences are); each group is analyzed as a trace would be:
first-order bootstrap replicates (analyze/contraction/influence.py), and where N ≤ 8·d the exact jackknife, κ simulated per
layer and pooled over the layers (analyze/contraction/calibration.py). A right SE has sd(â)/SE ≈ 1 and covers ≈ 95 %; G groups measure
sd(â) to ±1/√(2(G−1)). Consecutive listed layers, on one token stream, stand in for two checkpoints: their Δa
interval is formed as a comparison forms it (Trace.paired_boot).

Build the store once (CPython's language reference, reference/corpus/python_docs.txt, cut into ~220-character pieces
of distinct paragraphs; ~35,000 tokens on SmolLM2-135M, ~1 minute):

    .venv/bin/python benchmarks/check_real_coverage.py --prompts out/docs.txt          # writes the prompt file
    .venv/bin/spinal capture models/SmolLM2-135M-Instruct.Q4_1.gguf -p out/docs.txt -o out/docs.zarr \\
        --positions all-but-first --dtype float32 --batch-size 32 --max-length 64
    .venv/bin/python benchmarks/check_real_coverage.py out/docs.zarr --groups 20    # N ≈ 2·d: 20 groups
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import t as student
from threadpoolctl import threadpool_limits

from spinal.analyze.contraction.gram import GramAccumulator
from spinal.analyze.contraction.layer_spectrum import Replicates, paired_replicates, pool, spectrum_of
from spinal.analyze.contraction.intervals import replicate_se
from spinal.store.contract import Store

CORPUS = Path(__file__).resolve().parent.parent / "reference" / "corpus" / "python_docs.txt"
PIECE = 220  # characters per prompt: ~50 tokens, like a short chat reply


def side(s) -> Replicates:
    """A LayerSpectrum as a comparison pairs it: â, replicates, leave-one-out values, κ (as a Trace row holds them)."""
    return Replicates(s.centered.a_wls, s.boot, s.leave_one_out, s.kappa)


def pieces() -> tuple[list[str], list[int]]:
    """Distinct paragraphs of the corpus cut into ~PIECE-character prompts, and each prompt's paragraph."""
    seen, text, para = set(), [], []
    for i, p in enumerate(CORPUS.read_text().split("\n\n")):
        p = p.strip()
        if p in seen:  # the reference repeats sections: identical prompts are one point counted twice
            continue
        seen.add(p)
        chunk: list[str] = []
        for w in p.split():
            chunk.append(w)
            if len(" ".join(chunk)) >= PIECE:
                text.append(" ".join(chunk))
                para.append(i)
                chunk = []
        if len(" ".join(chunk)) >= 80:
            text.append(" ".join(chunk))
            para.append(i)
    keep = {t: j for j, t in reversed(list(enumerate(text)))}  # first occurrence of each distinct piece
    order = sorted(keep.values())
    return [text[j] for j in order], [para[j] for j in order]


def _deal(ids: np.ndarray, sizes: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each id: largest first, each to the bin holding the fewest tokens so far (equal bins to within one)."""
    out, load = np.empty(ids.size, int), np.zeros(bins)
    for j in np.argsort(-sizes[ids], kind="stable"):
        out[j] = int(np.argmin(load))
        load[out[j]] += sizes[ids[j]]
    return out


def balanced(sizes: np.ndarray, groups: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Group and block of each paragraph (by id): groups of equal token counts, and within each 16 blocks of equal
    token counts. Equal N matters: E[â] moves with N (0.72 at 1,200 tokens, 0.65 at 3,900 on one layer here), so
    groups of unequal size spread â by more than sampling does; equal blocks keep the delete-one-block jackknife
    as the real stores have it (sequences of similar length dealt round-robin)."""
    ids = rng.permutation(np.flatnonzero(sizes > 0))
    group_of, block_of = np.full(sizes.size, -1), np.full(sizes.size, -1)
    group_of[ids] = _deal(ids, sizes, groups)
    for g in range(groups):
        members = ids[group_of[ids] == g]
        block_of[members] = _deal(members, sizes, 16)
    return group_of, block_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", nargs="?")
    ap.add_argument("--prompts", help="write the prompt file (one piece per line) here and exit")
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--layers", default="2,8,15,22,29")
    ap.add_argument("--sims", type=int, default=4, help="calibration_sims per layer (pooled over --layers)")
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()
    text, para = pieces()
    if args.prompts:
        Path(args.prompts).write_text("\n".join(text) + "\n")
        print(f"wrote {len(text)} prompts from {len(set(para))} paragraphs to {args.prompts}")
        return
    threadpool_limits(2)
    store = Store.open(args.store)
    if int(store.meta["n_sequences"]) != len(text):
        raise SystemExit(f"{args.store} holds {store.meta['n_sequences']} sequences, the prompt file {len(text)}: "
                         "capture it from --prompts' file")
    layers = [int(x) for x in args.layers.split(",")]
    paragraph = np.array(para)
    # One piece per paragraph: the paragraph is the independent unit, and its first piece keeps units alike in
    # size (whole paragraphs run from 40 to 600+ tokens: no equal blocks could be dealt from them).
    first = np.r_[True, paragraph[1:] != paragraph[:-1]]
    seq_all = store.read("tokens/sequence")
    kept = seq_all[(seq_all >= 0)]
    sizes = np.bincount(paragraph[kept[first[kept]]], minlength=paragraph.max() + 1)
    group_of, block_of = balanced(sizes, args.groups, np.random.default_rng(0))
    per_group: list[list] = [[] for _ in range(args.groups)]
    t0 = time.perf_counter()
    for layer in layers:
        h, seq = map(np.concatenate, zip(*store.iter_layer(layer)))
        h, seq = h[first[seq]], seq[first[seq]]
        group, block = group_of[paragraph[seq]], block_of[paragraph[seq]]
        for g in range(args.groups):
            m = group == g
            res = GramAccumulator(h.shape[1], blocks=16).update(h[m], block[m]).finish()
            per_group[g].append(spectrum_of(res, layer, storage_dtype=store.dtype, n_boot=args.n_boot,
                                            null_splits=0, seed=0, window=None, calibration_sims=args.sims))
        print(f"  layer {layer} done, {time.perf_counter() - t0:.0f} s", flush=True)
    pooled = [pool(spectra) for spectra in per_group]  # one trace per group: κ pooled over its layers
    q = student.ppf(0.975, 15)
    rows = []
    for j, layer in enumerate(layers):
        s = [p[j] for p in pooled]
        a = np.array([x.centered.a_wls for x in s])
        se = np.array([replicate_se(x.boot, x.blocks) for x in s])
        first = np.array([x.se_first for x in s])
        jk = np.array([x.se_jackknife for x in s])
        sd, mean = a.std(ddof=1), a.mean()
        rows.append(dict(layer=layer, n=int(np.mean([x.n_tokens for x in s])), mean_a=mean, sd_a=sd,
                         sd_over_se=sd / np.median(se), sd_over_first=sd / np.median(first),
                         sd_over_jackknife=sd / np.median(jk), kappa=float(np.median([x.kappa for x in s])),
                         coverage=float(np.mean(np.abs(a - mean) <= q * se)),
                         coverage_first=float(np.mean(np.abs(a - mean) <= q * first))))
    pairs = []  # consecutive listed layers as two "checkpoints" on one token stream: the paired Δa interval
    for j in range(len(layers) - 1):
        d_a, se, first = [], [], []
        for p in pooled:
            x, y = p[j], p[j + 1]
            delta = y.centered.a_wls - x.centered.a_wls
            rep = paired_replicates(*map(side, (x, y)), x.blocks)  # as Trace.paired_boot, per layer
            d_a.append(delta)
            se.append(replicate_se(rep, x.blocks))
            first.append(replicate_se(y.first_order - x.first_order, x.blocks))
        d_a, se, first = map(np.array, (d_a, se, first))
        sd, mean = d_a.std(ddof=1), d_a.mean()
        pairs.append(dict(layers=f"{layers[j]}→{layers[j + 1]}", mean_delta=mean, sd_delta=sd,
                          sd_over_se=sd / np.median(se), sd_over_first=sd / np.median(first),
                          coverage=float(np.mean(np.abs(d_a - mean) <= q * se)),
                          coverage_first=float(np.mean(np.abs(d_a - mean) <= q * first))))
    d = int(store.meta["dim"])
    print(f"\n{args.groups} disjoint groups of ~{rows[0]['n']:,} tokens (N ≈ {rows[0]['n'] / d:.1f}·d, d = {d}); "
          f"sd(â) known to ±{100 / np.sqrt(2 * (args.groups - 1)):.0f} %\n")
    print("| layer | mean â | sd(â) | sd/SE interval | sd/SE first-order | sd/SE jackknife | κ | covers (interval) "
          "| covers (first-order) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['mean_a']:.4f} | {r['sd_a']:.4f} | {r['sd_over_se']:.2f} | {r['sd_over_first']:.2f} "
              f"| {r['sd_over_jackknife']:.2f} | {r['kappa']:.3f} | {100 * r['coverage']:.0f} % "
              f"| {100 * r['coverage_first']:.0f} % |")
    print("\nPaired Δa between consecutive listed layers (two \"checkpoints\" on one token stream):\n")
    print("| layers | mean Δa | sd(Δa) | sd/SE interval | sd/SE first-order | covers (interval) | covers (first-order) |")
    print("|---|---|---|---|---|---|---|")
    for r in pairs:
        print(f"| {r['layers']} | {r['mean_delta']:+.4f} | {r['sd_delta']:.4f} | {r['sd_over_se']:.2f} | "
              f"{r['sd_over_first']:.2f} | {100 * r['coverage']:.0f} % | {100 * r['coverage_first']:.0f} % |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"real_coverage_{args.groups}.json").write_text(json.dumps({"layers": rows, "pairs": pairs}, indent=1))


if __name__ == "__main__":
    main()
