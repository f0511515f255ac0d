"""Train SPINAL's reference family (base → SFT → DPO checkpoints) on CPU, seeded, and evaluate it.

    python -m reference.train                       # full run into reference/ (~17 min on 1 CPU thread)
    python -m reference.train --short --out /tmp/r  # test-sized run (< 1 min)

Stages: a byte-level BPE tokenizer; a small Llama pre-trained on plain text (`base`); SFT on
dialogues of both styles (`sft`); DPO from `sft` with `sft` as the frozen reference, saved at
several steps (`dpo-stepNNNN`); and a deliberately over-trained DPO run (`dpo-overtrained`, a
learning rate far too high) whose destabilization should be visible. Each stage starts from the
bf16-rounded weights its parent was saved with, so the shipped lineage is exact.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from . import data as D
from . import model as M
from . import scoring as S

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Stage:
    """Optimizer settings of one stage (AdamW, linear warm-up then cosine decay to 10% or constant)."""

    steps: int  # optimizer steps
    batch_size: int  # sequences (pre-training, SFT) or preference pairs (DPO) per step
    lr: float  # peak learning rate
    warmup: int = 20  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW decoupled decay on matrices (never on norm weights)
    schedule: str = "cosine"  # "cosine" (to 10% of lr at the last step), "constant" after warm-up, or "ramp":
    #                           constant to ramp_from, then geometric to ramp_factor·lr at the last step
    ramp_from: int = 0
    ramp_factor: float = 1.0
    grad_clip: float = 1.0  # max global gradient norm
    beta: float = 0.0  # DPO temperature; 0 for the likelihood stages
    save_at: tuple[int, ...] = ()  # DPO steps to save as dpo-stepNNNN (the last step is always saved)

    def __post_init__(self):
        if self.schedule not in ("cosine", "constant", "ramp"):
            raise ValueError(f"Stage.schedule must be 'cosine', 'constant' or 'ramp', got {self.schedule!r}")
        if self.schedule == "ramp" and not 0 <= self.ramp_from < self.steps:
            raise ValueError(f"Stage.ramp_from {self.ramp_from} must lie in 0..steps-1={self.steps - 1}")
        if any(not 0 < s <= self.steps for s in self.save_at):
            raise ValueError(f"Stage.save_at {self.save_at} must lie in 1..steps={self.steps}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a family: seed, architecture, data sizes, the four stages, evaluation sizes."""

    seed: int
    arch: M.Architecture
    sizes: D.DataSizes
    seq_len: int  # pre-training block length (tokens)
    pretrain: Stage
    sft: Stage
    dpo: Stage
    overtrained: Stage
    eval_pairs: int  # held-out pairs scored per checkpoint (the first N of data/heldout_pairs.jsonl)
    eval_generations: int  # held-out prompts answered greedily per checkpoint for the style rates


FULL = RunConfig(
    seed=0, arch=M.Architecture(), sizes=D.DataSizes(), seq_len=128,
    pretrain=Stage(steps=300, batch_size=32, lr=3e-3, warmup=30, weight_decay=0.1),
    sft=Stage(steps=300, batch_size=32, lr=1e-3, warmup=20, weight_decay=0.1),
    dpo=Stage(steps=200, batch_size=16, lr=1e-4, warmup=10, schedule="constant", beta=0.1, save_at=(25, 75)),
    # 30x the DPO learning rate and no warm-up: the standard way to make a DPO run diverge.
    overtrained=Stage(steps=200, batch_size=16, lr=3e-3, warmup=0, schedule="constant", beta=0.1),
    eval_pairs=512, eval_generations=64,
)
SHORT = RunConfig(
    seed=0,
    arch=M.Architecture(vocab_size=1024, hidden_size=64, intermediate_size=128, max_position_embeddings=128),
    sizes=D.DataSizes(pretrain_docs=600, sft=400, dpo=128, heldout=256, validation_docs=20), seq_len=64,
    pretrain=Stage(steps=30, batch_size=16, lr=1e-2, warmup=5, weight_decay=0.1),
    sft=Stage(steps=40, batch_size=16, lr=5e-3, warmup=5),
    dpo=Stage(steps=16, batch_size=8, lr=5e-4, warmup=2, schedule="constant", beta=0.1, save_at=(6,)),
    overtrained=Stage(steps=16, batch_size=8, lr=1.5e-2, warmup=0, schedule="constant", beta=0.1),
    eval_pairs=48, eval_generations=6,
)


def optimizer(model, stage: Stage) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]  # no decay on norms
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": stage.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=stage.lr, betas=(0.9, 0.95))

    def factor(step: int) -> float:
        if step < stage.warmup:
            return (step + 1) / stage.warmup
        if stage.schedule == "constant":
            return 1.0
        if stage.schedule == "ramp":
            if step < stage.ramp_from:
                return 1.0
            return stage.ramp_factor ** ((step - stage.ramp_from) / max(1, stage.steps - 1 - stage.ramp_from))
        progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def step(model, opt, sched, loss: torch.Tensor, stage: Stage) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
    opt.step()
    sched.step()
    return float(norm)


def pretrain(model, tokenizer, docs: list[str], cfg: RunConfig, history: list) -> None:
    """Next-token prediction on packed blocks of plain text ([BOS] doc [EOS] [BOS] doc …)."""
    stream: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=True):
        stream += enc.ids + [tokenizer.eos_token_id]
    n = len(stream) // cfg.seq_len
    blocks = torch.tensor(stream[: n * cfg.seq_len]).view(n, cfg.seq_len)  # (block, position)
    log.info("pre-training on %d tokens in %d blocks of %d", len(stream), n, cfg.seq_len)
    gen = torch.Generator().manual_seed(cfg.seed)
    epochs = cfg.pretrain.steps * cfg.pretrain.batch_size / n
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(epochs))])  # new order each epoch
    log.info("pre-training: %d steps = %.2f epochs", cfg.pretrain.steps, epochs)
    opt, sched = optimizer(model, cfg.pretrain)
    model.train()
    for i in range(cfg.pretrain.steps):
        x = blocks[order[i * cfg.pretrain.batch_size : (i + 1) * cfg.pretrain.batch_size]]  # (sequence, position)
        loss = model(input_ids=x, labels=x).loss
        gnorm = step(model, opt, sched, loss, cfg.pretrain)
        record(history, "pretrain", i + 1, cfg.pretrain.steps, loss=float(loss.detach()), grad_norm=gnorm)


def sft(model, tokenizer, dialogues: list[dict], cfg: RunConfig, history: list) -> None:
    """Next-token prediction on response tokens (incl. EOS) of User/Assistant dialogues."""
    encoded = [S.encode(tokenizer, d["prompt"], d["response"]) for d in dialogues]
    rng = random.Random(f"{cfg.seed}-sft-order")
    opt, sched = optimizer(model, cfg.sft)
    model.train()
    for i in range(cfg.sft.steps):
        batch = rng.sample(encoded, cfg.sft.batch_size)
        loss = S.lm_loss(model, batch, tokenizer.pad_token_id)
        gnorm = step(model, opt, sched, loss, cfg.sft)
        record(history, "sft", i + 1, cfg.sft.steps, loss=float(loss.detach()), grad_norm=gnorm)


def dpo(policy, ref_logps: dict[int, tuple[float, float]], pairs: list[tuple[S.Encoded, S.Encoded]],
        stage: Stage, name: str, seed: int, pad_id: int, history: list, on_save) -> None:
    """DPO against precomputed reference log-probs; calls on_save(step) at stage.save_at and the end."""
    rng = random.Random(f"{seed}-dpo-order")  # the same pair order for every DPO run
    opt, sched = optimizer(policy, stage)
    policy.train()
    saves = set(stage.save_at) | {stage.steps}
    for i in range(stage.steps):
        idx = rng.sample(range(len(pairs)), stage.batch_size)
        batch = [pairs[j][0] for j in idx] + [pairs[j][1] for j in idx]
        lp, _ = S.response_logps(policy, batch, pad_id)
        ref = torch.tensor([ref_logps[j] for j in idx])  # (pair, 2)
        k = stage.batch_size
        loss, margin = S.dpo_loss(lp[:k], lp[k:], ref[:, 0], ref[:, 1], stage.beta)
        gnorm = step(policy, opt, sched, loss, stage)
        record(history, name, i + 1, stage.steps, loss=float(loss.detach()), margin=float(margin.mean()),
               accuracy=float((margin > 0).float().mean()), chosen_logp=float(lp[:k].detach().mean()),
               grad_norm=gnorm)
        if i + 1 in saves:
            on_save(i + 1)


@torch.no_grad()
def reference_logps(ref, pairs, pad_id: int, batch: int = 64) -> dict[int, tuple[float, float]]:
    ref.eval()
    out = {}
    for s in range(0, len(pairs), batch):
        chunk = pairs[s : s + batch]
        lp, _ = S.response_logps(ref, [p[0] for p in chunk] + [p[1] for p in chunk], pad_id)
        for j in range(len(chunk)):
            out[s + j] = (float(lp[j]), float(lp[len(chunk) + j]))
    return out


def record(history: list, stage: str, i: int, total: int, **values) -> None:
    every = max(1, total // 40)
    if i % every == 0 or i == total:
        history.append({"stage": stage, "step": i, **values})
        log.info("%s %d/%d %s", stage, i, total, " ".join(f"{k}={v:.4g}" for k, v in values.items()))


def run(cfg: RunConfig, out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    ckpts = out / "checkpoints"
    if ckpts.exists():  # remove a previous family so EVAL.md never lists stale checkpoints
        for p in ckpts.iterdir():
            if not (p / M.LINEAGE_FILE).exists():
                raise ValueError(f"{p} is not a reference checkpoint (no {M.LINEAGE_FILE}); refusing to delete it")
        shutil.rmtree(ckpts)
    times: dict[str, float] = {}
    history: list[dict] = []
    t0 = time.perf_counter()

    ds = D.build(cfg.seed, cfg.sizes)
    D.check_heldout(ds)
    manifest = ds.manifest(cfg.seed, cfg.sizes)
    D.write_heldout(ds, out, manifest)
    tokenizer = M.train_tokenizer(ds.pretrain + [d["prompt"] + d["response"] for d in ds.sft], cfg.arch.vocab_size)
    bad = [h["id"] for h in ds.heldout if S.encode(tokenizer, h["prompt"], h["chosen"]).ids[:-1]
           != tuple(tokenizer(h["prompt"] + h["chosen"])["input_ids"])]
    if bad:
        raise RuntimeError(f"prompt/response token boundary differs from joint tokenization for {bad[:5]}")
    times["data+tokenizer"] = time.perf_counter() - t0
    base_record = {"seed": cfg.seed, "data_sha256": manifest["sha256"], "architecture": asdict(cfg.arch)}

    def save(model, name, stage, parent, hp: Stage, extra=None):
        M.save_checkpoint(model, tokenizer, ckpts / name, base_record | {
            "name": name, "stage": stage, "parent": parent, "hyperparameters": asdict(hp), **(extra or {})})
        log.info("saved %s", ckpts / name)

    t = time.perf_counter()
    model = M.build_model(cfg.arch, tokenizer, cfg.seed)
    torch.manual_seed(cfg.seed + 1)
    pretrain(model, tokenizer, ds.pretrain, cfg, history)
    save(model, "base", "pretrain", None, cfg.pretrain, {"step": cfg.pretrain.steps})
    times["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    model = M.round_to_bf16(model)
    sft(model, tokenizer, ds.sft, cfg, history)
    save(model, "sft", "sft", "base", cfg.sft, {"step": cfg.sft.steps})
    model = M.round_to_bf16(model)
    times["sft"] = time.perf_counter() - t

    t = time.perf_counter()
    pairs = [(S.encode(tokenizer, p["prompt"], p["chosen"]), S.encode(tokenizer, p["prompt"], p["rejected"]))
             for p in ds.dpo]
    ref_logps = reference_logps(model, pairs, tokenizer.pad_token_id)
    sft_state = {k: v.clone() for k, v in model.state_dict().items()}
    times["reference log-probs"] = time.perf_counter() - t
    for name, stage in (("dpo", cfg.dpo), ("dpo-overtrained", cfg.overtrained)):
        t = time.perf_counter()
        model.load_state_dict(sft_state)
        torch.manual_seed(cfg.seed + 2)

        def on_save(i, name=name, stage=stage):
            ck = f"dpo-step{i:04d}" if name == "dpo" else name
            save(model, ck, "dpo", "sft", stage, {"step": i, "beta": stage.beta, "reference": "sft"})

        dpo(model, ref_logps, pairs, stage, name, cfg.seed, tokenizer.pad_token_id, history, on_save)
        times[name] = time.perf_counter() - t
    times["train total"] = time.perf_counter() - t0
    summary = {"config": asdict(cfg), "threads": threads, "wall_s": times, "history": history,
               "torch": torch.__version__}
    (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder: checkpoints/, prompts/, data/, training.json, eval.json, EVAL.md "
                         "(default: the reference/ folder itself, i.e. regenerate the shipped family)")
    ap.add_argument("--short", action="store_true", help="test-sized run: smaller model and data, < 1 min")
    ap.add_argument("--seed", type=int, default=0, help="master seed for data, initialization and order")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--no-eval", action="store_true", help="train only; run reference.evaluate later")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every training record")
    args = ap.parse_args(argv)
    if args.out is None:
        if args.short:  # never let a test-sized run overwrite the shipped family
            ap.error("--short needs --out DIR")
        args.out = HERE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bars for 1-file checkpoints
    cfg = replace(SHORT if args.short else FULL, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    run(cfg, args.out, args.threads)
    if not args.no_eval:
        from . import evaluate

        evaluate.evaluate(args.out, cfg.eval_pairs, cfg.eval_generations, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
