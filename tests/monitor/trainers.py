"""Tiny real training runs for the monitor's tests: transformers' Trainer on a 3-block Llama, seeded, on the CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

from conftest import PROMPTS, build_model, make_tokenizer, write_jsonl

# Cheap analysis for tests: few resamples, no calibration simulations, every lens token.
FAST = {"analyze": {"n_boot": 50, "calibration_sims": 0, "lens_tokens": 0, "null_splits": 2},
        "compare": {"n_boot": 50, "null_splits": 4, "cross_readout_tokens": 256, "position_tokens": 256}}
FAST_SETS = [f"--set={t}.{k}={v}" for t, kv in FAST.items() for k, v in kv.items()]


def tokenizer():
    tok = make_tokenizer(bos=True)
    tok.pad_token = tok.eos_token
    return tok


def probe(path: Path) -> Path:
    """Twenty distinct prompt/response rows."""
    rows = [{"id": f"{p['id']}-{i}", "prompt": f"{p['prompt']} ({i})", "response": f"{p['response']} #{i}"}
            for i in range(4) for p in PROMPTS]
    return write_jsonl(path, rows)


def text_dataset(tok) -> Dataset:
    texts = [f"{p['prompt']}{p['response']} {i}" for i in range(8) for p in PROMPTS]
    return Dataset.from_dict({"text": texts}).map(lambda r: tok(r["text"]), remove_columns=["text"])


class LrJump(TrainerCallback):
    """Multiply the learning rate by ``factor`` from step ``at`` on: a run that breaks at a known step."""

    def __init__(self, at: int, factor: float):
        self.at, self.factor = at, factor

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step == self.at:
            for g in optimizer.param_groups:
                g["lr"] *= self.factor


def trainer(out: Path, *, steps: int = 6, save_steps: int = 2, report_to=(), lr: float = 1e-2,
            model=None, **args) -> Trainer:
    """A seeded Trainer on a tiny Llama; ``out/init`` holds the model before training (for `spinal watch`)."""
    tok = tokenizer()
    if model is None:
        model = build_model("llama").train()
    init = out / "init"
    if not init.exists():
        model.save_pretrained(init)
        tok.save_pretrained(init)
    targs = TrainingArguments(output_dir=str(out / "run"), max_steps=steps, save_steps=save_steps, logging_steps=1,
                              per_device_train_batch_size=4, report_to=list(report_to), learning_rate=lr, seed=0,
                              use_cpu=True, disable_tqdm=True, save_only_model=True, lr_scheduler_type="constant",
                              **args)
    return Trainer(model=model, args=targs, train_dataset=text_dataset(tok),
                   data_collator=DataCollatorForLanguageModeling(tok, mlm=False), processing_class=tok)


def weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows an offline W&B run wrote (its ``run-*.wandb``: a LevelDB-style log of 32 KiB blocks, each
    record a 7-byte header — CRC, length, type — and a protobuf ``Record``), read back with wandb's own protobufs."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    raw, pos, buf, rows, block = run_file.read_bytes(), 7, b"", [], 32768  # after the ':W&B' file header
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pos += 7
        buf += raw[pos : pos + n]
        pos += n
        if kind in (1, 4):  # FULL, or LAST of a record split over blocks
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows
