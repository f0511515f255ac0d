"""Capture throughput against the bare forward pass and a plain `output_hidden_states` + save script, in one run.

    .venv/bin/python benchmarks/bench_capture.py            # ~50M-parameter Llama-style model, all layers
    .venv/bin/python benchmarks/bench_capture.py --update-docs

All methods see the same batches (same prompts, same padding). Reported as ratios to the bare
forward pass of the causal LM (what a user times first), plus peak memory at N and 2N prompts
(each in its own process) to show it does not grow with the prompt count.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import functools

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import PRINT_PEAK_RSS, child_peak_rss_mib, gpt2_small, llama_50m, machine, publish, write_prompts  # noqa: E402
from spinal.capture.discover import discover  # noqa: E402

HERE = Path(__file__).parent
# (key in the results, codec, O_DIRECT shard files): the default, checksum-only, and the default through the page cache
SPINAL_RUNS = (("spinal_capture", "zstd-1", True), ("spinal_capture_crc32c", "crc32c", True),
               ("spinal_capture_buffered", "zstd-1", False))


def _batches(ckpt: Path, prompts: Path, batch: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spinal.capture.inputs.prompts import load_prompts
    from spinal.capture.tokens import tokenize
    from spinal.capture.units import batch_inputs

    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tokd = tokenize(load_prompts(str(prompts)), tok, max_length=4096, chat_template=False, positions="all-but-first")
    n = len(tokd.input_ids)
    batches = [batch_inputs(tokd, list(range(i, min(n, i + batch))), tok, torch.device("cpu"))[:2]
               for i in range(0, n, batch)]
    stored = sum(len(p) for p in tokd.positions)
    return model, tok, batches, stored


@torch.no_grad()
def time_forward(model, batches, base: bool) -> float:
    fn = model.base_model if base else model
    t = time.perf_counter()
    for ids, mask in batches:
        fn(input_ids=ids, attention_mask=mask, use_cache=False)
    return time.perf_counter() - t


@torch.no_grad()
def time_hf_save(model, batches, out: Path) -> tuple[float, int]:
    """The script a user would write: output_hidden_states=True, stack, np.save per batch."""
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i, (ids, mask) in enumerate(batches):
        hs = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True).hidden_states
        np.save(out / f"batch{i:05d}.npy", torch.stack(hs).numpy())  # (layer, batch, seq, dim), with padding
    dt = time.perf_counter() - t
    return dt, sum(f.stat().st_size for f in out.iterdir())


@torch.no_grad()
def time_transformerlens(ckpt: Path, model, tok, batches, out: Path) -> tuple[float, int]:
    """TransformerLens (TransformerBridge) run_with_cache on the residual stream only, + np.save per batch."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(ckpt), hf_model=model, tokenizer=tok)
    n = len(discover(model).blocks)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]
    wanted = set(names)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i, (ids, mask) in enumerate(batches):
        _, cache = bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda k: k in wanted)
        np.save(out / f"batch{i:05d}.npy", torch.stack([cache[k] for k in names]).numpy())
    dt = time.perf_counter() - t
    return dt, sum(f.stat().st_size for f in out.iterdir())


@torch.no_grad()
def time_nnsight(model, tok, batches, out: Path) -> tuple[float, int]:
    """nnsight trace saving every block's input/output, + np.save per batch."""
    import nnsight
    from nnsight import LanguageModel

    lm = LanguageModel(model, tokenizer=tok)
    blocks = discover(model).blocks
    path = next(name for name, m in model.named_modules() if m is blocks)  # "model.layers", "transformer.h", …
    n = len(blocks)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i, (ids, mask) in enumerate(batches):
        with lm.trace({"input_ids": ids, "attention_mask": mask}):
            layers = functools.reduce(getattr, path.split("."), lm)  # the envoy of the block list
            outs = nnsight.save([])
            outs.append(layers[0].inputs)
            for j in range(n):
                outs.append(layers[j].output)
        args, kwargs = outs[0]
        first = args[0] if args else kwargs["hidden_states"]
        rest = [o[0] if isinstance(o, tuple) else o for o in outs[1:]]
        np.save(out / f"batch{i:05d}.npy", torch.stack([first] + rest).numpy())
    dt = time.perf_counter() - t
    return dt, sum(f.stat().st_size for f in out.iterdir())


def max_abs_diff(npy_dir: Path, store_path: Path) -> list[float]:
    """Per layer, max |peer − SPINAL| over batch 0's stored tokens (0.0 = bit-exact)."""
    from spinal.store.contract import Store

    saved = np.load(npy_dir / "batch00000.npy")  # (layer, batch, seq, dim)
    store = Store.open(str(store_path))
    t = store.tokens()
    out = []
    for li in range(saved.shape[0]):
        ours = store.hidden[li][...]
        worst = 0.0
        for b in range(saved.shape[1]):
            sel = t["sequence"] == b
            worst = max(worst, float(np.abs(saved[li, b, t["position"][sel]] - ours[sel]).max()))
        out.append(worst)
    return out


def describe(diffs: list[float]) -> str:
    if all(d == 0 for d in diffs):
        return "bit-exact"
    if all(d == 0 for d in diffs[:-1]):
        return f"bit-exact except the last layer (final-normed; max abs diff {diffs[-1]:.2g})"
    return f"max abs diff {max(diffs):.2g} (layers {[i for i, d in enumerate(diffs) if d]})"


def time_spinal(ckpt: Path, prompts: Path, out: Path, batch: int, model, tok, codec: str = "zstd-1",
                direct: bool = True) -> tuple[float, int]:
    from spinal.capture import capture
    from spinal.capture.load import Loaded
    from spinal.config import CaptureConfig

    source = {"model": str(ckpt), "weights_fingerprint": "bench", "tokenizer": {"fingerprint": "bench"},
              "architecture": type(model).__name__}
    cfg = CaptureConfig(model=str(ckpt), prompts=str(prompts), out=str(out), batch_size=batch, overwrite=True,
                        codec=codec, direct_io=direct)
    shutil.rmtree(out, ignore_errors=True)  # a new store each time, its predecessor removed outside the timing
    t = time.perf_counter()
    capture(cfg, loaded=Loaded(model, tok, source))
    dt = time.perf_counter() - t
    # activations only: the lens (here a 32000 × 512 float32 unembedding, 62.5 MiB) is reported apart
    return dt, sum(f.stat().st_size for f in (out / "hidden").rglob("*") if f.is_file())


def peak_memory(ckpt: Path, prompts: Path, out: Path, batch: int) -> float:
    code = (
        "import sys, resource; from spinal.capture import capture; from spinal.config import CaptureConfig;"
        f"capture(CaptureConfig(model={str(ckpt)!r}, prompts={str(prompts)!r}, out={str(out)!r}, batch_size={batch},"
        " overwrite=True))\n" + PRINT_PEAK_RSS
    )
    return child_peak_rss_mib(code)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=192)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model", choices=("llama-50m", "gpt2-small"), default="llama-50m",
                    help="a ~58M Llama-style model, or a GPT-2-small-shaped one (124M, LayerNorm, tied head)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="paired rounds of the base-model forward pass and each SPINAL variant (median reported)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--update-docs", action="store_true", help="also rewrite this benchmark's table in docs/")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="spinal-bench-"))
    ckpt = llama_50m(work / "llama50m") if args.model == "llama-50m" else gpt2_small(work / "gpt2-small")
    prompts = write_prompts(work / "prompts.jsonl", args.prompts, args.length)
    model, tok, batches, stored = _batches(ckpt, prompts, args.batch)
    n_params = sum(p.numel() for p in model.parameters())
    time_forward(model, batches[:2], base=False)  # warm-up
    # SPINAL against its floor in paired rounds: each round times the base-model forward pass and every SPINAL
    # variant back to back (the order rotated from round to round), and a ratio is taken within a round. A shared
    # machine's speed drifts by tens of percent over minutes; a ratio of two runs minutes apart measures the drift.
    # The bare causal LM and the peers run once, between the first round and the rest.
    variants = (("base_forward", None, None),) + SPINAL_RUNS
    runs: dict[str, list] = {key: [] for key, _, _ in variants}

    def one_round(r: int) -> None:
        for key, codec, direct in variants[r % len(variants):] + variants[:r % len(variants)]:
            if codec is None:
                runs[key].append((time_forward(model, batches, base=True), 0))
            else:
                runs[key].append(time_spinal(ckpt, prompts, work / f"{key}.zarr", args.batch, model, tok, codec,
                                             direct))

    bare_runs = [time_forward(model, batches, base=False)]
    one_round(0)
    hf_s, hf_bytes = time_hf_save(model, batches, work / "hf-npy")
    from transformers import AutoModelForCausalLM

    fresh = lambda: AutoModelForCausalLM.from_pretrained(ckpt).eval()  # noqa: E731  (wrappers may reconfigure it)
    tl_s, tl_bytes = time_transformerlens(ckpt, fresh(), tok, batches, work / "tl-npy")
    nn_s, nn_bytes = time_nnsight(fresh(), tok, batches, work / "nnsight-npy")
    bare_runs.append(time_forward(model, batches, base=False))
    for r in range(1, args.rounds):
        one_round(r)
    seconds = {key: [t for t, _ in rs] for key, rs in runs.items()}
    bare, base = min(bare_runs), float(np.median(seconds["base_forward"]))
    keys = [key for key, _, _ in SPINAL_RUNS]
    paired = {key: [b / t for b, t in zip(seconds["base_forward"], seconds[key])] for key in keys}
    typical = {key: (float(np.median(seconds[key])), runs[key][0][1]) for key in keys}  # (median seconds, bytes)
    exact = {name: describe(max_abs_diff(work / d, work / "spinal_capture.zarr"))
             for name, d in (("hf_hidden_states_npy", "hf-npy"), ("transformerlens_npy", "tl-npy"),
                             ("nnsight_npy", "nnsight-npy"))}
    prompts2 = write_prompts(work / "prompts2.jsonl", 2 * args.prompts, args.length, seed=1)
    mem1 = peak_memory(ckpt, prompts, work / "m1.zarr", args.batch)
    mem2 = peak_memory(ckpt, prompts2, work / "m2.zarr", args.batch)
    res = {
        "benchmark": "capture", "model": args.model, "machine": machine(), "model_params": n_params,
        "architecture": type(model).__name__, "layers_stored": len(discover(model).blocks) + 1,
        "prompts": args.prompts, "seq_len": args.length, "batch": args.batch, "stored_tokens": stored,
        "rounds": args.rounds,
        "floor_runs_seconds": {"bare_forward": bare_runs, "base_forward": seconds["base_forward"]},
        "spinal_runs_seconds": {key: seconds[key] for key in keys},
        "paired_ratio_to_base_forward": paired,
        "seconds": {"bare_forward": bare, "base_forward": base, **{key: t for key, (t, _) in typical.items()},
                    "hf_hidden_states_npy": hf_s, "transformerlens_npy": tl_s, "nnsight_npy": nn_s},
        "ratio_to_base_forward": {key: float(np.median(v)) for key, v in paired.items()},
        "ratio_to_bare_forward": {**{key: bare / t for key, (t, _) in typical.items()},
                                  "hf_hidden_states_npy": bare / hf_s,
                                  "transformerlens_npy": bare / tl_s, "nnsight_npy": bare / nn_s,
                                  "base_forward": bare / base},
        "bytes_on_disk": {**{key: b for key, (_, b) in typical.items()}, "hf_hidden_states_npy": hf_bytes,
                          "transformerlens_npy": tl_bytes, "nnsight_npy": nn_bytes},
        "peak_rss_mib": {f"{args.prompts} prompts": mem1, f"{2 * args.prompts} prompts": mem2},
        "agreement_with_spinal_store": exact,
    }
    suffix = "" if args.model == "llama-50m" else f"-{args.model}"
    publish(res, f"capture-cpu{suffix}", render(res), f"capture{suffix}", args.update_docs)
    shutil.rmtree(work, ignore_errors=True) if args.workdir is None else None
    return res


def render(r: dict) -> str:
    s, rt, b = r["seconds"], r["ratio_to_bare_forward"], r["bytes_on_disk"]
    tok = r["stored_tokens"]
    mem = list(r["peak_rss_mib"].items())
    n = r.get("rounds", 2)
    rounds = f"median of {n} paired rounds" if "paired_ratio_to_base_forward" in r else "faster of two runs"
    rows = [
        f"Capture, {r['model_params'] / 1e6:.0f}M-parameter {r.get('architecture', 'Llama')}, all {r['layers_stored']} layers, "
        f"{r['prompts']} prompts × {r['seq_len']} tokens, batch {r['batch']}, float32, "
        f"{r['machine']['cores']} cores (`python benchmarks/bench_capture.py --model {r.get('model', 'llama-50m')}`):",
        "",
        "| method | seconds | tokens/s | throughput × bare forward | × base-model forward | bytes on disk | persisted copy |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| bare forward (causal LM, nothing kept; faster of a run before and after the tools) | {s['bare_forward']:.2f} | {tok / s['bare_forward']:,.0f} | 1.00 | – | – | – |",
        f"| bare forward, base model only (no vocab head; what SPINAL runs; {rounds}) | {s['base_forward']:.2f} | "
        f"{tok / s['base_forward']:,.0f} | {rt['base_forward']:.2f} | 1.00 | – | – |",
    ]
    rb = r.get("ratio_to_base_forward", {})
    for key, name in (("spinal_capture", "**spinal capture** (default `--codec zstd-1`: lossless Zarr, zstd + crc32c, "
                                         "O_DIRECT shard files)"),
                      ("spinal_capture_crc32c", "**spinal capture**, `--codec crc32c` (checksum only, no compression)"),
                      ("spinal_capture_buffered", "spinal capture, zstd-1 through the page cache (`--no-direct-io`)")):
        if key in s:
            rows.append(f"| {name} | {s[key]:.2f} | {tok / s[key]:,.0f} | {rt[key]:.2f} | {rb.get(key, float('nan')):.2f} | "
                        f"{b[key] / 2**20:,.1f} MiB (+ lens) | bit-exact, pre-norm last layer, stored positions only |")
    ex = r["agreement_with_spinal_store"]
    for key, name in (("hf_hidden_states_npy", "HF `output_hidden_states` + `np.save`"),
                      ("transformerlens_npy", "TransformerLens `run_with_cache` (resid only) + `np.save`"),
                      ("nnsight_npy", "nnsight `trace` + `.save()` + `np.save`")):
        rows.append(f"| {name} | {s[key]:.2f} | {tok / s[key]:,.0f} | {rt[key]:.2f} | {s['base_forward'] / s[key]:.2f} | "
                    f"{b[key] / 2**20:,.1f} MiB | vs SPINAL's store: {ex[key]}; padding kept |")
    per_round = r.get("paired_ratio_to_base_forward", {})
    if per_round:
        names = {"spinal_capture": "zstd-1", "spinal_capture_crc32c": "crc32c",
                 "spinal_capture_buffered": "zstd-1 through the page cache"}
        rows += ["", f"SPINAL's × base-model forward is the median over {n} rounds, each timing the base-model forward "
                 "pass and every SPINAL row back to back (order rotated between rounds), of the ratio within a round; "
                 "per round: " + "; ".join(f"{names[k]} " + ", ".join(f"{x:.2f}" for x in v)
                                           for k, v in per_round.items()) + "."]
    rows += [
        "",
        f"Peak RSS of a capture process: {mem[0][1]:,.0f} MiB at {mem[0][0]}, {mem[1][1]:,.0f} MiB at {mem[1][0]}.",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
