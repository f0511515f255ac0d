"""Training with the monitor attached against training without it, side by side in one run: step time and each
save's capture share.

    .venv/bin/python benchmarks/bench_monitor.py [--rounds 2] [--smol-rounds 1] [--smol-prompts 128] [--update-docs]

Two DPO loops, each run plain and with spinal.monitor's Monitor attached (begin before the first step, save +
collect at each save, end after the last), on fresh copies of the same starting weights, seeded alike:

- toy: reference/train.py's ``dpo`` from the shipped ``sft`` checkpoint (the dense series' first phase: the family's
  DPO settings), ``--steps`` steps saving every ``--every``; the monitor as configs/series-monitor.toml sets it
  (probe reference/prompts/audit.jsonl, 512 prompts, response positions), reference = the model before training.
- smollm2: reference/real_dpo.py's ``train`` (LoRA on SmolLM2-135M-Instruct from the GGUF, dequantized to float32),
  ``--smol-steps`` steps saving every ``--smol-every``; the monitor as configs/smollm2-dpo.toml sets the capture
  (chat template, reply positions), its analysis on one worker (the monitor's default), the probe ``--smol-prompts``
  rows: the shipped held-out probe (reference/smollm2/prompts/audit.jsonl, 102 rows) and then the training prompts
  with the base's own reply, so every probe row is a reply DPO acts on.

Both arms save the model at each save as a trainer would (save_pretrained, a few MB); the monitor arm also captures.
Timed per save: the training seconds since the previous save (or the first step), the capture (Monitor.save's own
figure), the rest of Monitor.save and collect (the loop's only contact with the background analysis), and after the
last step the wait in Monitor.end. Rounds alternate which arm goes first; ratios are taken within a round.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from common import machine, publish  # noqa: E402

SMOL_CAPTURE = {"chat_template": True, "positions": "reply", "dtype": "float32", "batch_size": 16, "max_length": 128}
SMOL_ANALYZE = {"n_boot": 1000, "null_splits": 8, "companion_tokens": 1024}
SMOL_COMPARE = {"n_boot": 1000, "weights": False, "cross_readout_tokens": 2048}


def timed(train, model, steps: int, save_dir: Path, monitor_cfg=None, tokenizer=None, seed: int = 0,
          end_wait: float | None = None) -> dict:
    """One arm: ``train(on_save)`` runs the loop; with ``monitor_cfg`` a Monitor is attached. Per-save timings.
    ``end_wait``: at most this many seconds for the analysis after the last step (None: until it is done); a
    worker still busy then is stopped, and what it had audited is recorded."""
    from spinal.monitor.session import Monitor

    m = begin_s = None
    if monitor_cfg is not None:
        t = time.perf_counter()
        m = Monitor(monitor_cfg, tokenizer, seed=seed)
        m.begin(model, 0)
        begin_s = time.perf_counter() - t
    saves: list[dict] = []
    last = t0 = time.perf_counter()

    def on_save(step: int) -> None:
        nonlocal last
        t = time.perf_counter()
        rec = {"step": step, "train_s": t - last}
        model.save_pretrained(save_dir / f"checkpoint-{step}")  # what the trainer does at a save, in both arms
        rec["checkpoint_s"] = time.perf_counter() - t
        if m is not None:
            t1 = time.perf_counter()
            rec["capture_s"] = m.save(model, step)
            t2 = time.perf_counter()
            rec["audited_so_far"] = len(m.logged) + len(m.collect())
            rec["save_rest_s"], rec["collect_s"] = t2 - t1 - rec["capture_s"], time.perf_counter() - t2
        saves.append(rec)
        last = time.perf_counter()

    train(on_save)
    wall = time.perf_counter() - t0
    res = {"wall_s": wall, "step_s": wall / steps, "saves": saves, "tail_s": wall - sum(
        s["train_s"] + s["checkpoint_s"] + s.get("capture_s", 0) + s.get("save_rest_s", 0) + s.get("collect_s", 0)
        for s in saves)}
    if m is not None:
        t = time.perf_counter()
        while end_wait is not None and len(m.logged) + len(m.collect()) < len(saves) \
                and time.perf_counter() - t < end_wait:
            time.sleep(1.0)
        m.end(wait=end_wait is None)
        res |= {"begin_s": begin_s, "end_wait_s": time.perf_counter() - t, "audited": len(m.logged),
                "analysis_done": len(m.logged) >= len(saves),
                "flagged": m.flagged, "worker_restarts": m.worker.restarts if m.worker else None,
                "probe_tokens": stored_tokens(m.folder.store(saves[0]["step"]))}
        if m.worker is not None and m.worker.proc.poll() is None:  # not waited for: stop the one this arm started
            m.worker.proc.kill()
            m.worker.proc.wait()
    return res


def stored_tokens(store: str) -> int:
    from spinal.store.contract import Store

    return int(Store.open(store).meta["n_tokens_valid"])


def toy(args, work: Path) -> tuple[dict, callable]:
    from reference import data as D, model as M, scoring as S
    from reference.series import HEALTHY
    from reference.train import HERE, dpo, reference_logps
    from spinal.monitor.config import load_monitor_config

    manifest = json.loads((HERE / "data" / "manifest.json").read_text())
    seed = manifest["seed"]
    ds = D.build(seed, D.DataSizes(**manifest["sizes"]))
    ref, tok, _ = M.load_checkpoint(HERE / "checkpoints" / "sft")
    pairs = [(S.encode(tok, p["prompt"], p["chosen"]), S.encode(tok, p["prompt"], p["rejected"])) for p in ds.dpo]
    ref_logps = reference_logps(ref, pairs, tok.pad_token_id)
    stage = replace(HEALTHY, steps=args.steps, save_at=tuple(range(args.every, args.steps, args.every)))
    config = ROOT / "configs" / "series-monitor.toml"

    def arm(name: str, monitored: bool) -> dict:
        model, _, _ = M.load_checkpoint(HERE / "checkpoints" / "sft")
        torch.manual_seed(seed + 2)
        cfg = load_monitor_config(str(config), out=str(work / f"{name}-audit")) if monitored else None
        train = lambda on_save: dpo(model, ref_logps, pairs, stage, "bench", seed, tok.pad_token_id, [], on_save)  # noqa: E731
        return timed(train, model, stage.steps, work / name, cfg, tok, seed)

    setup = {"steps": stage.steps, "save_every": args.every, "batch_pairs": stage.batch_size,
             "probe": "reference/prompts/audit.jsonl", "probe_prompts": 512, "monitor": "configs/series-monitor.toml"}
    return setup, arm


def smollm2(args, work: Path) -> tuple[dict, callable]:
    from reference import real_data as D
    from reference.real_dpo import DATA, FULL, Run, batched_logps, lora_model, load_base, pair_encodings, read_data, train
    from spinal.monitor.config import monitor_config

    model, tok = load_base()
    _, splits = read_data(DATA)
    rows = splits["harmful_train"][: args.smol_pairs // 2] + splits["benign_train"][: args.smol_pairs // 2]
    chosen, rejected = pair_encodings(tok, rows)
    ref = (batched_logps(model, chosen, tok.pad_token_id)[0], batched_logps(model, rejected, tok.pad_token_id)[0])
    shipped = D.read_jsonl(DATA.parent / "prompts" / "audit.jsonl")
    extra = [{"id": r["id"], "prompt": r["prompt"], "response": r["rejected"]}
             for r in splits["harmful_train"] + splits["benign_train"]]
    probe = (shipped + extra)[: args.smol_prompts]
    if len(probe) < args.smol_prompts:
        raise SystemExit(f"--smol-prompts {args.smol_prompts}: only {len(probe)} rows available")
    D.write_jsonl(work / "smol-probe.jsonl", probe)
    hp = Run(steps=args.smol_steps, lr=FULL.healthy.lr, warmup=FULL.healthy.warmup,
             save_at=tuple(range(args.smol_every, args.smol_steps + 1, args.smol_every)))

    def arm(name: str, monitored: bool) -> dict:
        nonlocal model
        pm = lora_model(model, FULL)
        cfg = monitor_config(str(work / f"{name}-audit"), str(work / "smol-probe.jsonl"), capture=SMOL_CAPTURE,
                             analyze=SMOL_ANALYZE, compare=SMOL_COMPARE) if monitored else None
        go = lambda on_save: train(pm, chosen, rejected, ref, hp, FULL.seed, tok.pad_token_id, on_save, [], "bench")  # noqa: E731
        try:
            return timed(go, pm, hp.steps, work / name, cfg, tok, FULL.seed, args.smol_end_wait)
        finally:
            model = pm.unload()

    setup = {"steps": hp.steps, "save_every": args.smol_every, "batch_pairs": hp.batch_pairs,
             "train_pairs": len(rows), "probe": f"{len(shipped)} rows of reference/smollm2/prompts/audit.jsonl, then "
             "training prompts with the base's reply", "probe_prompts": len(probe), "monitor": "configs/smollm2-dpo.toml's "
             "[capture], [analyze] and [compare], analysis on one worker", "lora": {"r": FULL.rank, "targets": FULL.targets}}
    return setup, arm


def rounds(setup_arm, rounds_n: int) -> dict:
    setup, arm = setup_arm
    runs = []
    for r in range(rounds_n):
        order = ("plain", "monitor") if r % 2 == 0 else ("monitor", "plain")
        res = {a: arm(f"r{r}-{a}", a == "monitor") for a in order}
        res["order"] = list(order)
        res["ratio"] = res["monitor"]["step_s"] / res["plain"]["step_s"]
        runs.append(res)
        mon = res["monitor"]
        print(f"  round {r + 1}: step {res['plain']['step_s']:.3f} s plain, {mon['step_s']:.3f} s monitored "
              f"(× {res['ratio']:.3f}); capture " + ", ".join(f"{s['capture_s']:.1f}" for s in mon["saves"])
              + f" s; end wait {mon['end_wait_s']:.1f} s", flush=True)
    return {"setup": setup, "rounds": runs}


def plain_step(run: dict) -> float:
    """Seconds per training step of the plain arm, saves excluded."""
    saves = run["plain"]["saves"]
    return sum(v["train_s"] for v in saves) / saves[-1]["step"]


def monitored_step(run: dict) -> float:
    saves = run["monitor"]["saves"]
    return sum(v["train_s"] for v in saves) / saves[-1]["step"]


def shares(run: dict) -> list[float]:
    return [s["capture_s"] / s["train_s"] for s in run["monitor"]["saves"]]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="toy rounds (plain + monitored each)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--smol-rounds", type=int, default=1, help="SmolLM2 rounds (0: skip)")
    ap.add_argument("--smol-steps", type=int, default=6)
    ap.add_argument("--smol-every", type=int, default=3)
    ap.add_argument("--smol-prompts", type=int, default=128)
    ap.add_argument("--smol-end-wait", type=float, default=60.0, help="seconds to wait for SmolLM2's analysis after "
                    "the last step before stopping it (its traces take minutes each on a CPU)")
    ap.add_argument("--smol-pairs", type=int, default=16, help="training pairs (their reference log-probs first)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training loop (default 1, as the "
                    "reference scripts; the monitor's worker takes one more core)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--update-docs", action="store_true", help="also rewrite this benchmark's table in docs/")
    ap.add_argument("--from-json", default=None, help="publish a results file of an earlier run instead of running")
    args = ap.parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        publish(res, "monitor-cpu", render(res), "monitor", args.update_docs)
        return res
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="spinal-bench-monitor-"))
    res = {"machine": machine(), "threads": args.threads, "families": {}}
    print("toy", flush=True)
    res["families"]["toy"] = rounds(toy(args, work / "toy"), args.rounds)
    if args.smol_rounds:
        print("smollm2", flush=True)
        res["families"]["smollm2"] = rounds(smollm2(args, work / "smol"), args.smol_rounds)
    (work / "results.json").write_text(json.dumps(res, indent=2))
    publish(res, "monitor-cpu", render(res), "monitor", args.update_docs)
    return res


def render(r: dict) -> str:
    names = {"toy": "toy family DPO (from `sft`)", "smollm2": "SmolLM2-135M LoRA-DPO (GGUF, float32)"}
    lines = [f"Training with the monitor attached, {r['machine']['cores']} cores, training on {r['threads']} torch "
             f"thread(s), the background analysis on one more (`python benchmarks/bench_monitor.py`):", "",
             "| run | steps, save every | probe | step s plain → monitored (× ratio) per round | step s, saves excluded: plain "
             "→ monitored | training s between saves (monitored) | capture s per save | **capture share** per save | loop waits on the analysis (save rest + "
             "collect, max) | reference capture s | wait in `end` s (saves audited) | capture = plain training "
             "steps | share < 10 % from a save every N steps |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for fam, f in r["families"].items():
        s, runs = f["setup"], f["rounds"]
        mons = [x["monitor"] for x in runs]
        steps = "; ".join(f"{x['plain']['step_s']:.2f} → {x['monitor']['step_s']:.2f} (×{x['ratio']:.2f})" for x in runs)
        between = "; ".join(", ".join(f"{v['train_s']:.0f}" for v in m["saves"]) for m in mons)
        bare = "; ".join(f"{plain_step(x):.2f} → {monitored_step(x):.2f}" for x in runs)
        cap = "; ".join(", ".join(f"{v['capture_s']:.1f}" for v in m["saves"]) for m in mons)
        share = "; ".join(", ".join(f"{x:.0%}" for x in shares(x)) for x in runs)
        waits = max(v["save_rest_s"] + v["collect_s"] for m in mons for v in m["saves"])
        begin = ", ".join(f"{m['begin_s']:.1f}" for m in mons)
        end = ", ".join(f"{m['end_wait_s']:.0f} ({m['audited']}/{len(m['saves'])})" for m in mons)
        in_steps = statistics.median(statistics.mean(v["capture_s"] for v in x["monitor"]["saves"]) / plain_step(x)
                                     for x in runs)
        lines.append(f"| {names[fam]} | {s['steps']}, {s['save_every']} | {s['probe_prompts']} prompts, "
                     f"{mons[0]['probe_tokens']:,} tokens | {steps} | {bare} | {between} | {cap} | **{share}** | "
                     f"{waits:.2f} | {begin} | {end} | {in_steps:.0f} | {10 * in_steps:.0f} |")
    lines += ["", "Step s = the loop's wall time over its steps, saves included (plain: the checkpoint write; monitored: "
              "also the capture); rounds separated by `;` (which arm goes first alternates). Capture share = the save's "
              "capture seconds over the training seconds since the previous save in the same run. The loop's only "
              "contact with the analysis is `Monitor.collect` (reading series.jsonl) and the rest of `Monitor.save`; "
              "it waits for the analysis only in `Monitor.end`, after the last step."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
