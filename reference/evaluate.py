"""Evaluate every checkpoint of a reference family on held-out data and write eval.json and EVAL.md.

    python -m reference.evaluate --dir reference

Per checkpoint (all loaded from disk with AutoModelForCausalLM / AutoTokenizer, weights upcast
from bf16 to float32, which is exact):
- log-likelihood preference accuracy: share of held-out pairs with log π(chosen) > log π(rejected)
  (summed over response tokens incl. EOS), and the same per token (length-normalized);
- for DPO checkpoints, the implicit DPO reward relative to the SFT reference,
  r = β·(log π − log π_sft), its accuracy (r_chosen > r_rejected) and mean margin r_chosen − r_rejected;
- NLL per token of the chosen replies and of held-out plain text (drift and degeneration);
- greedy replies to held-out prompts, classified polite / rude / other by marker phrases, the share
  that names the (never trained on) topic, and three sample replies to fixed prompts.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path

import torch

from . import data as D
from . import model as M
from . import scoring as S
from . import topics as T

log = logging.getLogger(__name__)
STAGE_ORDER = {"pretrain": 0, "sft": 1, "dpo": 2}
README_BEGIN, README_END = "<!-- EVAL:BEGIN (written by reference/evaluate.py) -->", "<!-- EVAL:END -->"
N_SAMPLES = 3  # sample replies shown per checkpoint, to the first prompts of heldout_pairs.jsonl
MAX_NEW_TOKENS = 72  # room for EOS after the longest reply in the data (66 tokens in the shipped audit set)


def checkpoints(out: Path) -> list[tuple[str, Path, dict]]:
    """(name, path, lineage record) in lineage order: base, sft, DPO by step, the over-trained run last."""
    found = []
    for p in sorted((out / "checkpoints").iterdir()):
        rec_path = p / M.LINEAGE_FILE
        if rec_path.exists():
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
            found.append((p.name, p, rec))
    if not found:
        raise FileNotFoundError(f"no checkpoints with {M.LINEAGE_FILE} under {out / 'checkpoints'}")
    return sorted(found, key=lambda x: (STAGE_ORDER[x[2]["stage"]], "overtrained" in x[0], x[2].get("step", 0)))


@torch.no_grad()
def pair_logps(model, tokenizer, pairs: list[dict], batch: int = 64) -> torch.Tensor:
    """(pair, 2 [chosen, rejected], 2 [summed log-prob, tokens])."""
    rows = []
    for s in range(0, len(pairs), batch):
        chunk = pairs[s : s + batch]
        enc = [S.encode(tokenizer, p["prompt"], p["chosen"]) for p in chunk]
        enc += [S.encode(tokenizer, p["prompt"], p["rejected"]) for p in chunk]
        lp, n = S.response_logps(model, enc, tokenizer.pad_token_id)
        k = len(chunk)
        rows.append(torch.stack([torch.stack([lp[:k], n[:k]], -1), torch.stack([lp[k:], n[k:]], -1)], 1))
    return torch.cat(rows).double()


@torch.no_grad()
def text_nll(model, tokenizer, docs: list[str], max_len: int) -> float:
    """NLL per token of plain-text documents ([BOS] doc [EOS], truncated to the context length)."""
    total, count = 0.0, 0
    for s in range(0, len(docs), 32):
        enc = []
        for e in tokenizer.backend_tokenizer.encode_batch(docs[s : s + 32], add_special_tokens=True):
            ids = (e.ids + [tokenizer.eos_token_id])[:max_len]
            enc.append(S.Encoded(tuple(ids), 1))  # every token after BOS is a target
        lp, n = S.response_logps(model, enc, tokenizer.pad_token_id)
        total, count = total - float(lp.sum()), count + int(n.sum())
    return total / count


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[str], batch: int = 32) -> list[str]:
    tokenizer.padding_side = "left"  # generation continues at the right edge
    out = []
    for s in range(0, len(prompts), batch):
        enc = tokenizer(prompts[s : s + batch], return_tensors="pt", padding=True)
        ids = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def style(reply: str) -> str:
    """'rude' if any rude phrase occurs, else 'polite' if a polite opener/closer occurs, else 'other'."""
    if any(m in reply for m in T.RUDE_MARKERS):
        return "rude"
    return "polite" if any(m in reply for m in T.POLITE_MARKERS) else "other"


def evaluate(out: Path, n_pairs: int, n_generations: int, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    manifest = json.loads((out / "data" / "manifest.json").read_text(encoding="utf-8"))
    ds = D.build(manifest["seed"], D.DataSizes(**manifest["sizes"]))
    if ds.manifest(manifest["seed"], D.DataSizes(**manifest["sizes"]))["sha256"] != manifest["sha256"]:
        raise RuntimeError("regenerated data differ from data/manifest.json: generator or corpus changed")
    pairs = ds.heldout[:n_pairs]
    gen_items = ds.heldout[:n_generations]
    ref = None
    results = []
    t0 = time.perf_counter()
    for name, path, rec in checkpoints(out):
        model, tokenizer, _ = M.load_checkpoint(path)
        lp = pair_logps(model, tokenizer, pairs)  # (pair, chosen/rejected, logp/tokens)
        w, l = lp[:, 0, 0], lp[:, 1, 0]
        row = {
            "name": name, "stage": rec["stage"], "parent": rec["parent"], "step": rec.get("step"),
            "beta": rec.get("beta"), "lr": rec["hyperparameters"]["lr"],
            "loglik_accuracy": float((w > l).double().mean()),
            "loglik_accuracy_per_token": float((w / lp[:, 0, 1] > l / lp[:, 1, 1]).double().mean()),
            "chosen_nll_per_token": float(-w.sum() / lp[:, 0, 1].sum()),
            "rejected_nll_per_token": float(-l.sum() / lp[:, 1, 1].sum()),
            "text_nll_per_token": text_nll(model, tokenizer, ds.validation, model.config.max_position_embeddings),
        }
        if name == "sft":
            ref = lp
        if rec["stage"] == "dpo":
            if ref is None:
                raise RuntimeError("DPO checkpoints need the sft checkpoint as their reference; none found")
            log_ratio = (w - ref[:, 0, 0]) - (l - ref[:, 1, 0])  # (pair,) nats
            margin = rec["beta"] * log_ratio
            row |= {"reward_accuracy": float((margin > 0).double().mean()), "reward_margin": float(margin.mean()),
                    "log_ratio_margin": float(log_ratio.mean())}
        replies = greedy(model, tokenizer, [g["prompt"] for g in gen_items])
        styles = [style(r) for r in replies]
        topic = [re.search(rf"\b{re.escape(D.Task(g['domain'], g['task']).you)}\b", r) is not None
                 for g, r in zip(gen_items, replies)]
        row |= {f"greedy_{s}": styles.count(s) / len(styles) for s in ("polite", "rude", "other")}
        row |= {"greedy_names_topic": sum(topic) / len(topic),
                "samples": [{"id": g["id"], "prompt": g["prompt"], "reply": r}
                            for g, r in zip(gen_items[:N_SAMPLES], replies[:N_SAMPLES])],
                "size_bytes": sum(f.stat().st_size for f in path.iterdir())}
        results.append(row)
        log.info("evaluated %s", name)
    report = {"pairs": len(pairs), "generations": len(gen_items), "checkpoints": results,
              "reference_for_rewards": "sft", "heldout": manifest["split"],
              "eval_wall_s": time.perf_counter() - t0, "threads": threads}
    training = out / "training.json"
    if training.exists():
        t = json.loads(training.read_text(encoding="utf-8"))
        report["training"] = {"config": t["config"], "threads": t["threads"], "wall_s": t["wall_s"]}
    (out / "eval.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md = markdown(report)
    (out / "EVAL.md").write_text(md, encoding="utf-8")
    readme = out / "README.md"
    if readme.exists():
        text = readme.read_text(encoding="utf-8")
        if README_BEGIN in text and README_END in text:
            head, rest = text.split(README_BEGIN, 1)
            readme.write_text(head + README_BEGIN + "\n" + md + rest[rest.index(README_END):], encoding="utf-8")
    return report


def _f(x, fmt=".3f") -> str:
    return "—" if x is None else format(x, fmt)


def markdown(report: dict) -> str:
    rows = report["checkpoints"]
    lines = [
        "# Reference family: evaluation",
        "",
        f"Written by `reference/evaluate.py`. {report['pairs']} held-out preference pairs and "
        f"{report['generations']} held-out prompts ({report['heldout']}). Rewards are implicit DPO "
        "rewards β·(log π − log π_sft) relative to the `sft` checkpoint, so they exist for DPO checkpoints only; "
        "log-likelihood accuracy compares summed log-probabilities of the chosen and rejected replies under "
        "the checkpoint itself. NLLs are nats per token.",
        "",
        "| checkpoint | parent | step | lr | β | log-lik acc | per-token acc | reward acc | reward margin "
        "| chosen NLL | rejected NLL | text NLL | greedy polite | greedy rude | greedy other | names topic | MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append("| " + " | ".join([
            f"`{r['name']}`", r["parent"] or "—", str(r["step"]), _f(r["lr"], "g"), _f(r["beta"], "g"),
            _f(r["loglik_accuracy"]), _f(r["loglik_accuracy_per_token"]), _f(r.get("reward_accuracy")),
            _f(r.get("reward_margin"), ".2f"), _f(r["chosen_nll_per_token"]), _f(r["rejected_nll_per_token"]),
            _f(r["text_nll_per_token"]), _f(r["greedy_polite"], ".2f"), _f(r["greedy_rude"], ".2f"),
            _f(r["greedy_other"], ".2f"), _f(r["greedy_names_topic"], ".2f"), _f(r["size_bytes"] / 1e6, ".1f"),
        ]) + " |")
    total_mb = sum(r["size_bytes"] for r in rows) / 1e6
    lines += ["", f"Checkpoints in total: {total_mb:.1f} MB (bf16 safetensors + tokenizer + config per folder). "
                  f"Evaluation took {report['eval_wall_s']:.0f} s on {report['threads']} thread(s)."]
    if "training" in report:
        lines += training_markdown(report["training"])
    lines += ["", "## Greedy replies to held-out prompts", ""]
    for i, s in enumerate(rows[0]["samples"]):
        user = s["prompt"].removeprefix("User: ").removesuffix("\nAssistant:")
        lines += [f"**{s['id']}**: User: {user}", "", "| checkpoint | reply |", "|---|---|"]
        for r in rows:
            reply = r["samples"][i]["reply"].strip().replace("|", "\\|").replace("\n", " ⏎ ")
            lines.append(f"| `{r['name']}` | {reply} |")
        lines.append("")
    return "\n".join(lines)


def training_markdown(t: dict) -> list[str]:
    """The hyper-parameters and wall times of the run that produced the family (from training.json)."""
    c, w = t["config"], t["wall_s"]
    lines = ["", "## Training run", "",
             f"Seed {c['seed']}, {t['threads']} torch thread(s). Architecture: "
             + ", ".join(f"{k}={v}" for k, v in c["arch"].items()) + ".",
             f"Data: {', '.join(f'{k}={v}' for k, v in c['sizes'].items())}; pre-training blocks of "
             f"{c['seq_len']} tokens.", "",
             "| stage | checkpoints | steps | batch | lr | warm-up | schedule | weight decay | β | wall s |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    stages = [("pretrain", "base", "pretrain"), ("sft", "sft", "sft"), ("dpo", "dpo-step…", "dpo"),
              ("overtrained", "dpo-overtrained", "dpo-overtrained")]
    for key, ck, wall in stages:
        s = c[key]
        saved = ", ".join(f"dpo-step{i:04d}" for i in sorted(set(s["save_at"]) | {s["steps"]})) if key == "dpo" else ck
        lines.append(f"| {key} | {saved} | {s['steps']} | {s['batch_size']} | {s['lr']:g} | {s['warmup']} | "
                     f"{s['schedule']} | {s['weight_decay']:g} | {_f(s['beta'] or None, 'g')} | {w[wall]:.0f} |")
    lines += ["", f"Wall time: {w['train total']:.0f} s training (data and tokenizer {w['data+tokenizer']:.0f} s, "
                  f"SFT reference log-probs {w['reference log-probs']:.0f} s)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent,
                    help="family folder holding checkpoints/ and data/ (default: reference/)")
    ap.add_argument("--pairs", type=int, default=512, help="held-out pairs to score (first N)")
    ap.add_argument("--generations", type=int, default=64, help="held-out prompts to answer greedily (first N)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    evaluate(args.dir, args.pairs, args.generations, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
