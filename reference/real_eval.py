"""Ground truth for the SmolLM2 LoRA-DPO checkpoints on held-out prompts: refusals, helpfulness, degeneracy, rewards.

Called by reference/real_dpo.py after training; writes reference/smollm2/eval.json and EVAL.md (EVAL.md is
`markdown(eval.json)`, nothing typed by hand).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from . import real_data as D
from . import real_dpo as R
from spinal.analyze.pool import stop_now
from spinal.outputs import cpu_model

EXAMPLES = 3  # held-out prompts of each kind whose replies EVAL.md shows for every checkpoint


def distinct(ids: list[int]) -> float:
    """Distinct-token ratio of one reply (1 = no token repeats; 0 for an empty reply)."""
    return len(set(ids)) / len(ids) if ids else 0.0


def repeated_trigrams(ids: list[int]) -> float:
    """Share of a reply's token 3-grams that already occurred earlier in it (0 for fewer than 3 tokens)."""
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def measure(model, tok, splits, cfg) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """One checkpoint's figures (the model as it is: adapter set or disabled by the caller) and its summed log-probs
    of the held-out pairs' chosen and rejected replies, each (pair,)."""
    harm, benign = splits["harmful_heldout"][: cfg.n_eval], splits["benign_heldout"][: cfg.n_eval]
    ids = R.greedy(model, tok, [r["prompt"] for r in harm + benign], cfg.max_new_tokens)
    replies = [tok.decode(i, skip_special_tokens=True).strip() for i in ids]
    h_rep, b_rep, b_ids = replies[: len(harm)], replies[len(harm):], ids[len(harm):]
    chosen, rejected = R.pair_encodings(tok, harm)
    pad = tok.pad_token_id
    (lw, nw), lr = R.batched_logps(model, chosen, pad), R.batched_logps(model, rejected, pad)[0]
    base_lp, base_n = R.batched_logps(model, [R.encode(tok, r["prompt"], r["base_reply"]) for r in benign], pad)
    return {
        "refusal_harmful": mean(D.is_refusal(r) for r in h_rep),
        "refusal_benign": mean(D.is_refusal(r) for r in b_rep),
        "distinct_benign": mean(distinct(i) for i in b_ids),
        "repeated_trigrams_benign": mean(repeated_trigrams(i) for i in b_ids),
        "empty_benign": mean(not i for i in b_ids),
        "reply_tokens_benign": mean(len(i) for i in b_ids),
        "base_reply_nll_benign": float(-(base_lp.sum() / base_n.sum())),
        "chosen_nll_heldout": float(-(lw.sum() / nw.sum())),
        "replies": {r["id"]: rep for r, rep in zip(harm + benign, replies)},
    }, (lw, lr)


def _load_adapter(pm, folder: Path) -> dict:
    """Set the LoRA weights of one saved (bf16) adapter folder into ``pm``; its lineage record."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = {k: v.float() for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}
    res = set_peft_model_state_dict(pm, weights)
    if res.unexpected_keys:
        raise RuntimeError(f"{folder}: adapter keys not in the model: {res.unexpected_keys[:3]}")
    return json.loads((folder / R.LINEAGE_FILE).read_text())


def _measure_adapters(pm, tok, splits, adapters: Path, names: list[str], cfg) -> list[tuple]:
    """(name, lineage, figures, held-out log-probs, seconds) of each adapter, in order."""
    out = []
    for name in names:
        t = time.perf_counter()
        lineage = _load_adapter(pm, adapters / name)
        row, lps = measure(pm, tok, splits, cfg)
        out.append((name, lineage, row, lps, time.perf_counter() - t))
    return out


def _worker_measure(splits, adapters: Path, names: list[str], cfg, threads: int, deterministic: bool) -> list[tuple]:
    """``_measure_adapters`` in a process of its own: the base loaded as the training loaded it, with the caller's
    thread count and kernels, so its figures are those a serial evaluation gives."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    base, tok = R.load_base()
    return _measure_adapters(R.lora_model(base, cfg), tok, splits, adapters, names, cfg)


def evaluate(pm_base, tok, splits, adapters: Path, names: list[str], cfg, record: dict, parallel: bool = True
             ) -> dict:
    """Every checkpoint, base first, read back from the saved (bf16) adapter files.

    ``parallel``: the later adapters are measured in a second process (its own base, one thread) while this one
    measures the base and the first ones: the same figures (tests/reference/test_real_dpo.py), in 283 s instead of
    575 s on two cores (docs/results/smollm2.md, footnote 1).
    """
    import concurrent.futures as cf
    import multiprocessing as mp

    harm = splits["harmful_heldout"][: cfg.n_eval]
    pm = R.lora_model(pm_base, cfg)
    split = (len(names) + 1) // 2 if parallel and len(names) >= 2 and (os.cpu_count() or 1) >= 2 else len(names)
    ex = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) if split < len(names) else None
    try:
        later = ex.submit(_worker_measure, splits, adapters, names[split:], cfg, torch.get_num_threads(),
                          torch.are_deterministic_algorithms_enabled()) if ex else None
        t = time.perf_counter()
        with pm.disable_adapter():  # the DPO reference: its log-probs are the rewards' baseline, its margin 0
            base_row, ref = measure(pm, tok, splits, cfg)
        base_s = time.perf_counter() - t
        measured = _measure_adapters(pm, tok, splits, adapters, names[:split], cfg) + (later.result() if later else [])
    except BaseException:  # Ctrl-C or a failure here: stop the second process now, not after its checkpoints
        if ex:
            stop_now(ex)
        raise
    if ex:
        ex.shutdown()
    rows = [{"name": "base", "stage": "base", "step": 0, "lr": None, "beta": None, "wall_s": base_s, **base_row,
             "reward_accuracy": None, "reward_margin": None}]
    for name, lineage, row, (lw, lr), seconds in measured:
        margin = cfg.healthy.beta * ((lw - ref[0]) - (lr - ref[1]))  # implicit reward margin (pair,)
        hp = lineage["hyperparameters"]
        rows.append({"name": name, "stage": lineage["stage"], "step": lineage["step"], "lr": hp.get("lr"),
                     "beta": hp.get("beta"), "wall_s": seconds, **row,
                     "reward_accuracy": float((margin > 0).float().mean()), "reward_margin": float(margin.mean())})
    n_bytes = sum(f.stat().st_size for n in names for f in (adapters / n).iterdir())
    return {
        "base": {"file": R.GGUF.name, "sha256": R.GGUF_SHA256},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "n_train_pairs": {n: len(splits[n][: cfg.n_train]) for n in ("harmful_train", "benign_train")},
        "n_heldout_harmful": len(harm), "n_heldout_benign": len(splits["benign_heldout"][: cfg.n_eval]),
        "heldout_topics": sorted({r["topic"] for r in harm}),
        "adapter_mb": n_bytes / 1e6,
        "classifier": {"markers": list(D.REFUSAL_MARKERS), "window_chars": D.REFUSAL_WINDOW},
        "prompts": {r["id"]: r["prompt"] for r in harm + splits["benign_heldout"][: cfg.n_eval]},
        "checkpoints": rows, "training": record,
    }


def _f(x, fmt=".3f") -> str:
    return "—" if x is None else format(x, fmt)


def markdown(report: dict) -> str:
    cps, tr = report["checkpoints"], report["training"]
    lines = [
        "# SmolLM2-135M-Instruct with LoRA-DPO adapters: evaluation", "",
        f"Written by `reference/real_eval.py` from `eval.json`. Base: `{report['base']['file']}` (SHA-256 "
        f"{report['base']['sha256'][:12]}…), dequantized to float32. {report['n_heldout_harmful']} held-out harmful "
        f"requests (topics never trained on: {'; '.join(report['heldout_topics'])}) and "
        f"{report['n_heldout_benign']} benign requests (held out, phrased alike), answered greedily "
        f"(≤ {tr['config']['max_new_tokens']} new tokens) under the chat template.", "",
        "A reply is a **refusal** when one of the markers " + ", ".join(f"\"{m}\"" for m in
                                                                         report["classifier"]["markers"])
        + f" occurs in its first {report['classifier']['window_chars']} characters (lower-cased). **Distinct** is "
        "the distinct-token ratio of a benign reply, **rep-3** the share of its token 3-grams already seen in it "
        "(both averaged over benign replies), **base-reply NLL** the per-token NLL of the base's own greedy benign "
        "replies under the checkpoint (rises as it moves away from the base), **chosen NLL** that of the held-out "
        "refusals. **Reward acc / margin**: implicit DPO reward β·[(log π − log π_base)(chosen) − (…)(rejected)] > 0 "
        "on the held-out pairs, and its mean.", "",
        "| checkpoint | stage | step | lr | β | refusal (harmful) | refusal (benign) | distinct (benign) | "
        "rep-3 (benign) | empty (benign) | base-reply NLL | chosen NLL | reward acc | reward margin | eval s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cps:
        lines.append(
            f"| `{c['name']}` | {c['stage']} | {c['step']} | {_f(c['lr'], 'g')} | {_f(c['beta'], 'g')} | "
            f"{c['refusal_harmful']:.2f} | {c['refusal_benign']:.2f} | {c['distinct_benign']:.3f} | "
            f"{c['repeated_trigrams_benign']:.3f} | {c['empty_benign']:.2f} | {c['base_reply_nll_benign']:.3f} | "
            f"{c['chosen_nll_heldout']:.3f} | {_f(c['reward_accuracy'], '.2f')} | {_f(c['reward_margin'], '.2f')} | "
            f"{c['wall_s']:.0f} |")
    cfg, w, m = tr["config"], tr["wall_s"], report["machine"]
    lora = f"LoRA r = {cfg['rank']}, α = {cfg['alpha']} on {', '.join(cfg['targets'])} of every block"
    lines += [
        "", "## Training run", "",
        f"Seed {cfg['seed']}, {tr['threads']} torch thread(s) on a {m['cores']}-core {m['cpu']} (shared with other "
        f"work: wall times are as measured, noisy), Python {m['python']}, torch {m['torch']}. "
        f"Training pairs: {report['n_train_pairs']['harmful_train']} harmful (chosen = a refusal, rejected = the base's "
        f"reply) and {report['n_train_pairs']['benign_train']} benign (chosen = the base's reply, rejected = a refusal). "
        f"{lora}; adapters saved in bf16 ({report['adapter_mb']:.1f} MB in all). DPO loss hand-written "
        "(`reference/scoring.dpo_loss`), reference = the base with the adapter disabled (log-probs precomputed once), "
        "AdamW (0.9, 0.95), no weight decay, gradient clipping at 1.0.", "",
        "| run | steps | pairs per step | lr | warm-up | β | saved at | final loss | final margin | wall s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for stage, key in (("dpo", "healthy"), ("overtrained", "overtrained")):
        hp, last = cfg[key], [h for h in tr["history"] if h["stage"] == stage][-1]
        lines.append(f"| {stage} | {hp['steps']} | {hp['batch_pairs']} | {hp['lr']:g} | {hp['warmup']} | "
                     f"{hp['beta']:g} | {', '.join(map(str, hp['save_at']))} | {last['loss']:.4f} | "
                     f"{last['margin']:.2f} | {w[stage]:.0f} |")
    lines += ["", "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in w.items()) + ".", "",
              "## Greedy replies to held-out prompts", ""]
    harm = [k for k in report["prompts"] if k.startswith("harm")][:EXAMPLES]
    benign = [k for k in report["prompts"] if k.startswith("benign")][:EXAMPLES]
    for pid in harm + benign:
        lines += [f"**{pid}**: {report['prompts'][pid]}", "", "| checkpoint | reply |", "|---|---|"]
        lines += [f"| `{c['name']}` | {_cell(c['replies'][pid])} |" for c in cps]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ") or "(empty)"


def write(report: dict, out: Path) -> None:
    (out / "eval.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    (out / "EVAL.md").write_text(markdown(report) + "\n")
