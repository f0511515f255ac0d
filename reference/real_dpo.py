"""A seeded LoRA-DPO run on the real SmolLM2-135M-Instruct towards refusing harmful requests, with ground truth.

    python -m reference.real_dpo                    # data (base replies generated once), training, evaluation
    python -m reference.real_dpo --reuse-data       # the same from the shipped data files (hashes checked)
    python -m reference.real_dpo --short --out DIR  # test-sized run on the shipped data

Chosen = a refusal (reference/real_data.py), rejected = the base model's own greedy reply. The policy is the base
(the GGUF, dequantized to float32 by spinal's own loader) plus a LoRA adapter (peft); the DPO reference is the same
model with the adapter disabled, its log-probs computed once. One healthy run is saved at several steps and one
deliberately over-trained run (a far higher learning rate) at its end, as PEFT folders under
reference/smollm2/adapters/; reference/real_eval.py measures each on held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from . import real_data as D
from . import scoring as S
from .real_model import GGUF, SHA256 as GGUF_SHA256

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent / "smollm2"
DATA = HERE / "data"
LINEAGE_FILE = "spinal_reference.json"


@dataclass(frozen=True)
class Run:
    """One DPO run: AdamW on the LoRA weights, linear warm-up then constant learning rate."""

    steps: int
    lr: float
    save_at: tuple[int, ...]  # steps saved as adapters (named dpo-stepNNNN; the over-trained run by its own name)
    warmup: int = 0
    batch_pairs: int = 8  # preference pairs per step (2 × as many sequences per forward)
    beta: float = 0.1  # DPO temperature
    grad_clip: float = 1.0


@dataclass(frozen=True)
class Config:
    seed: int
    rank: int  # LoRA rank
    alpha: int  # LoRA alpha (scale alpha / rank)
    targets: tuple[str, ...]  # LoRA target projections in every block
    max_new_tokens: int  # greedy reply length bound (base replies in the data, and evaluation replies)
    healthy: Run
    overtrained: Run
    n_train: int | None = None  # first N training pairs (None: all)
    n_eval: int | None = None  # first N held-out harmful, benign prompts and pairs (None: all)


FULL = Config(
    seed=0, rank=8, alpha=16, targets=("q_proj", "v_proj"), max_new_tokens=48,
    healthy=Run(steps=20, lr=3e-4, warmup=3, save_at=(8, 14, 20)),
    # 33x the healthy learning rate and no warm-up: the standard way to make a DPO run collapse.
    overtrained=Run(steps=12, lr=1e-2, save_at=(12,)),
)
SHORT = replace(FULL, max_new_tokens=8, n_train=4, n_eval=2,
                healthy=Run(steps=2, lr=2e-4, save_at=(1, 2), batch_pairs=2),
                overtrained=Run(steps=1, lr=5e-3, save_at=(1,), batch_pairs=2))


def load_base():
    """SmolLM2 from the GGUF through spinal's loader (dequantized, float32: CPUs have no fast bf16 matmul)."""
    from spinal.capture.load import load

    if not GGUF.exists():
        raise SystemExit(f"{GGUF} is missing: run `python -m reference.real_model` first")
    loaded = load(str(GGUF), dtype="float32", device_map="cpu")
    return loaded.model, loaded.tokenizer


def _ids(x) -> list[int]:
    return list(x["input_ids"] if hasattr(x, "keys") else x)


def prompt_ids(tok, prompt: str) -> list[int]:
    return _ids(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True))


def encode(tok, prompt: str, reply: str) -> S.Encoded:
    """The chat-templated dialogue; the scored tokens are the reply's and its closing <|im_end|> (not the newline
    the template adds after it). The prompt part must be the exact prefix of the rendered dialogue."""
    head = prompt_ids(tok, prompt)
    full = _ids(tok.apply_chat_template([{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": reply}]))
    if full[: len(head)] != head:
        raise RuntimeError(f"the chat template re-renders the prompt of {prompt!r}; the reply boundary is not exact")
    end = full.index(tok.eos_token_id, len(head))  # <|im_end|> closing the reply
    return S.Encoded(tuple(full[: end + 1]), len(head))


def logps(model, batch: list[S.Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each reply incl. <|im_end|>, reply tokens), each (sequence,); = scoring.response_logps,
    with the 49k-vocabulary readout computed only from the first reply's position on (logits_to_keep)."""
    ids, attn, resp = S.pad(batch, pad_id)
    off = min(e.start for e in batch) - 1  # the prediction at `off` scores the earliest reply token
    logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=ids.shape[1] - off).logits
    lp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (sequence, position, vocab); upcast: see scoring.py
    lp = lp.gather(-1, ids[:, off + 1:, None]).squeeze(-1)  # (sequence, position)
    mask = resp[:, off + 1:].float()
    return (lp * mask).sum(-1), mask.sum(-1)


@torch.no_grad()
def batched_logps(model, batch: list[S.Encoded], pad_id: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [logps(model, batch[i : i + size], pad_id) for i in range(0, len(batch), size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def greedy(model, tok, prompts: list[str], max_new: int, size: int = 32) -> list[list[int]]:
    """Greedy reply token ids (up to, without, <|im_end|>) per prompt; left-padded batches of `size`."""
    out: list[list[int]] = []
    eos = tok.eos_token_id
    for i in range(0, len(prompts), size):
        heads = [prompt_ids(tok, p) for p in prompts[i : i + size]]
        width = max(map(len, heads))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(h)) + h for h in heads])
        attn = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads])
        gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=eos, temperature=None, top_p=None)
        for row in gen[:, width:].tolist():
            out.append(row[: row.index(eos)] if eos in row else row)
    return out


def trim(tok, ids: list[int], max_new: int) -> str:
    """A reply as text; one cut off by the length bound ends at its last sentence end (if past 40 % of it), so
    stored replies read as whole replies."""
    text = tok.decode(ids, skip_special_tokens=True).strip()
    if len(ids) < max_new:
        return text
    cut = max(text.rfind(c) for c in (".", "!", "?", "\n"))
    return text[: cut + 1].strip() if cut > 0.4 * len(text) else text


def make_data(model, tok, cfg: Config, folder: Path, audit: Path) -> dict:
    """Generate the base's greedy replies once; write the JSONL splits, the audit prompts and the manifest."""
    splits = D.build(cfg.seed)
    D.check_heldout(splits)
    for name, key in D.GENERATED.items():
        t = time.perf_counter()
        for row, ids in zip(splits[name], greedy(model, tok, [r["prompt"] for r in splits[name]], cfg.max_new_tokens)):
            row[key] = trim(tok, ids, cfg.max_new_tokens)
        log.info("base replies for %s: %d in %.0f s", name, len(splits[name]), time.perf_counter() - t)
    for name, rows in splits.items():
        D.write_jsonl(folder / f"{name}.jsonl", rows)
    D.write_jsonl(audit, [{"id": r["id"], "prompt": r["prompt"], "response": r.get("rejected", r.get("base_reply"))}
                          for r in splits["harmful_heldout"] + splits["benign_heldout"]])
    files = [f"{n}.jsonl" for n in splits]
    manifest = {
        "seed": cfg.seed, "counts": {n: len(r) for n, r in splits.items()},
        "heldout_topics": sorted({r["topic"] for r in splits["harmful_heldout"]}),
        "base": {"file": GGUF.name, "sha256": GGUF_SHA256},
        "generation": {"decoding": "greedy", "max_new_tokens": cfg.max_new_tokens, "threads": torch.get_num_threads(),
                       "torch": torch.__version__},
        "sha256": {f: D.sha256(folder / f) for f in files} | {"../prompts/audit.jsonl": D.sha256(audit)},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_data(folder: Path) -> tuple[dict, dict[str, list[dict]]]:
    manifest = D.check_manifest(folder)
    return manifest, {n: D.read_jsonl(folder / f"{n}.jsonl") for n in manifest["counts"]}


def pair_encodings(tok, rows: list[dict]) -> tuple[list[S.Encoded], list[S.Encoded]]:
    return [encode(tok, r["prompt"], r["chosen"]) for r in rows], [encode(tok, r["prompt"], r["rejected"]) for r in rows]


def lora_model(base, cfg: Config):
    """The base wrapped with a fresh LoRA adapter (B = 0, so it starts exactly at the base; A seeded)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.targets), lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


def train(pm, chosen, rejected, ref: tuple[torch.Tensor, torch.Tensor], run: Run, seed: int, pad_id: int,
          on_save, history: list, stage: str) -> None:
    """DPO on the LoRA weights; the pair order is seeded and the same for every run."""
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=run.lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (run.warmup + 1)))
    rng = random.Random(f"{seed}-dpo-order")
    order: list[int] = []
    pm.train()
    for step in range(1, run.steps + 1):
        if len(order) < run.batch_pairs:
            order += rng.sample(range(len(chosen)), len(chosen))
        idx, order = order[: run.batch_pairs], order[run.batch_pairs:]
        lp, _ = logps(pm, [chosen[i] for i in idx] + [rejected[i] for i in idx], pad_id)
        n = len(idx)
        loss, margin = S.dpo_loss(lp[:n], lp[n:], ref[0][idx], ref[1][idx], run.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(params, run.grad_clip)
        opt.step()
        sched.step()
        history.append({"stage": stage, "step": step, "loss": loss.item(), "margin": float(margin.mean()),
                        "accuracy": float((margin > 0).float().mean()), "grad_norm": float(grad)})
        log.info("%s step %d/%d loss %.4f margin %.3f", stage, step, run.steps, loss.item(), float(margin.mean()))
        if step in run.save_at:
            on_save(step)
    pm.eval()


def save_adapter(pm, folder: Path, lineage: dict) -> None:
    """A PEFT folder with bf16 weights (half the bytes; peft upcasts on load) and the lineage record."""
    from safetensors.torch import load_file, save_file

    if folder.exists():
        shutil.rmtree(folder)
    pm.save_pretrained(str(folder))
    weights = folder / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(weights)).items()}, str(weights),
              metadata={"format": "pt"})
    cfg_file = folder / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = GGUF.name  # not this machine's path
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for extra in folder.glob("README.md"):
        extra.unlink()
    lineage = lineage | {"adapter_sha256": D.sha256(weights), "dtype": "bfloat16"}
    (folder / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2) + "\n")


def run(cfg: Config, out: Path, threads: int, reuse_data: bool) -> dict:
    """Data (or the shipped data), both DPO runs, the adapters under out/adapters; returns the training record."""
    from . import real_eval as E

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tok = load_base()
    times["load"] = time.perf_counter() - t0
    t = time.perf_counter()
    if reuse_data:
        manifest, splits = read_data(DATA)
    else:
        manifest = make_data(model, tok, cfg, out / "data", out / "prompts" / "audit.jsonl")
        manifest, splits = read_data(out / "data")
    times["data"] = time.perf_counter() - t
    train_rows = splits["harmful_train"][: cfg.n_train] + splits["benign_train"][: cfg.n_train]
    t = time.perf_counter()
    chosen, rejected = pair_encodings(tok, train_rows)
    ref = (batched_logps(model, chosen, tok.pad_token_id)[0], batched_logps(model, rejected, tok.pad_token_id)[0])
    times["reference_logps"] = time.perf_counter() - t
    adapters = out / "adapters"
    if adapters.exists():  # remove a previous run's adapters so EVAL.md never lists stale ones
        for p in adapters.iterdir():
            if not (p / LINEAGE_FILE).exists():
                raise ValueError(f"{p} is not a reference adapter (no {LINEAGE_FILE}); refusing to delete it")
        shutil.rmtree(adapters)
    lora = {"r": cfg.rank, "lora_alpha": cfg.alpha, "target_modules": list(cfg.targets), "lora_dropout": 0.0}
    base_record = {"base": manifest["base"], "seed": cfg.seed, "data_sha256": manifest["sha256"], "lora": lora}
    history: list[dict] = []
    saved: list[str] = []
    for stage, hp in (("dpo", cfg.healthy), ("overtrained", cfg.overtrained)):
        t = time.perf_counter()
        pm = lora_model(model, cfg)

        def on_save(step, stage=stage, hp=hp, pm=pm):
            name = f"dpo-step{step:04d}" if stage == "dpo" else "dpo-overtrained"
            save_adapter(pm, adapters / name, base_record | {"name": name, "stage": stage, "step": step,
                                                             "hyperparameters": asdict(hp)})
            saved.append(name)

        train(pm, chosen, rejected, ref, hp, cfg.seed, tok.pad_token_id, on_save, history, stage)
        model = pm.unload()  # the base again, without LoRA layers
        times[stage] = time.perf_counter() - t
    record = {"config": asdict(cfg), "threads": threads, "adapters": saved, "wall_s": times, "history": history}
    t = time.perf_counter()
    report = E.evaluate(model, tok, splits, adapters, saved, cfg, record)
    times["evaluation"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    E.write(report, out)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default reference/smollm2)")
    ap.add_argument("--short", action="store_true", help="test-sized run on the shipped data (needs --out)")
    ap.add_argument("--reuse-data", action="store_true", help="use the shipped data files instead of generating")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    if args.short and args.out is None:
        ap.error("--short writes a test-sized run: give --out DIR (not the shipped folder)")
    cfg = replace(SHORT if args.short else FULL, seed=args.seed)
    run(cfg, args.out or HERE, args.threads, reuse_data=args.reuse_data or args.short)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
