"""The trainer users actually use: TRL's DPOTrainer with a LoRA adapter on a tiny model, its probe a preference
dataset in TRL's own layout (a `datasets` folder). The callback audits the live adapted model at each save and
logs through the trainer; `spinal watch` of the same run's adapter checkpoints (merged into their base) agrees."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from conftest import build_model
from spinal.cli.app import app
from spinal.monitor import SpinalCallback
from spinal.store.contract import Store
from trainers import FAST, FAST_SETS, tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def dpo(tmp_path_factory):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    base = tmp_path_factory.mktemp("dpo")
    tok = tokenizer()
    model = build_model("llama").train()
    model.save_pretrained(base / "init")
    tok.save_pretrained(base / "init")
    pairs = Dataset.from_dict({"prompt": [f"Question {i}: how do I do thing {i}?" for i in range(24)],
                               "chosen": [f" Politely, step {i}." for i in range(24)],
                               "rejected": [f" No way {i}!" for i in range(24)]})
    pairs.save_to_disk(str(base / "pairs"))
    args = DPOConfig(output_dir=str(base / "run"), max_steps=4, save_steps=2, logging_steps=1,
                     per_device_train_batch_size=4, report_to=[], learning_rate=1e-3, seed=0, use_cpu=True,
                     disable_tqdm=True, save_only_model=True, beta=0.1, max_length=64)
    trainer = DPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tok,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM"))
    SpinalCallback(trainer, prompts=str(base / "pairs"), out=str(base / "audit"), background=False, **FAST)
    trainer.train()
    series = [json.loads(l) for l in (base / "audit" / "series.jsonl").read_text().splitlines()]
    return SimpleNamespace(base=base, trainer=trainer, series=series)


def test_dpo_trainer_with_lora_is_audited_at_each_save_and_logs_through_the_trainer(dpo):
    assert [r["step"] for r in dpo.series] == [2, 4]
    logged = {h["step"]: h for h in dpo.trainer.state.log_history if "spinal/terminal_delta_a" in h}
    assert sorted(logged) == [2, 4]
    for r in dpo.series:
        assert logged[r["step"]]["spinal/terminal_delta_a"] == pytest.approx(r["terminal_delta_a"])
        assert logged[r["step"]]["spinal/path_length"] == pytest.approx(r["path_length"])
    meta = Store.open(str(dpo.base / "audit" / "stores" / "step-000004.zarr")).meta
    assert meta["source"]["training"]["step"] == 4 and meta["source"]["training"]["seed"] == 0
    adapter = meta["source"]["training"]["adapter"]
    assert adapter["r"] == 4 and adapter["target_modules"] == ["q_proj", "v_proj"]
    assert meta["prompts"]["source"]["layout"].startswith("TRL preference")  # the dataset's own layout, no flags
    assert meta["prompts"]["source"]["reply"] == "chosen"


def test_spinal_watch_of_the_adapter_checkpoints_agrees_with_the_live_audit(dpo, tmp_path):
    """The adapter merged into its base (watch) and the live unmerged LoRA layers (callback): the same numbers up
    to the merge's float32 rounding."""
    init = str(dpo.base / "init")
    r = CliRunner().invoke(app, ["watch", str(dpo.base / "run"), "--out", str(tmp_path / "w"), "--prompts",
                                 str(dpo.base / "pairs"), "--base", init, "--reference", init, "--once",
                                 "--no-progress", *FAST_SETS])
    assert r.exit_code == 0, r.output
    watched = [json.loads(l) for l in (tmp_path / "w" / "series.jsonl").read_text().splitlines()]
    assert [w["step"] for w in watched] == [2, 4]
    for w, live in zip(watched, dpo.series):
        for k in ("terminal_delta_a", "terminal_delta_L", "path_length"):
            assert w[k] == pytest.approx(live[k], rel=1e-3, abs=1e-6), (k, w[k], live[k])
