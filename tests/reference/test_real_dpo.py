"""The SmolLM2 LoRA-DPO pair: the DPO loss and reply scoring against hand computations, the shipped data against its
manifest and generator, the shipped evaluation against EVAL.md, and the shipped adapters through spinal's loader.

The real model is read from models/ (skipped locally when absent, a failure under CI); nothing downloads.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `reference` is a folder of scripts at the repository root, not installed
    sys.path.insert(0, str(ROOT))

from conftest import build_model, real_model  # noqa: E402
from reference import real_data as D  # noqa: E402
from reference import real_dpo as R  # noqa: E402
from reference import real_eval as E  # noqa: E402
from reference import scoring as S  # noqa: E402
from reference.real_model import GGUF  # noqa: E402

SHIPPED = ROOT / "reference" / "smollm2"


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((SHIPPED / "eval.json").read_text())


def test_the_dpo_loss_is_minus_log_sigmoid_of_the_reward_margin():
    policy_w, policy_l = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    ref_w, ref_l = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
    loss, margin = S.dpo_loss(policy_w, policy_l, ref_w, ref_l, beta=0.1)
    by_hand = [0.1 * ((-10 + 11) - (-12 + 11)), 0.1 * ((-4 + 5) - (-3 + 5))]  # β[(Δ chosen) − (Δ rejected)]
    assert by_hand == pytest.approx([0.2, -0.1]) and margin.tolist() == pytest.approx(by_hand)
    assert float(loss) == pytest.approx(sum(math.log1p(math.exp(-m)) for m in by_hand) / 2)  # −log σ(m) = log(1+e^−m)


def test_reply_log_probs_equal_a_by_hand_sum_over_the_reply_tokens():
    """logps keeps the vocabulary readout only from the first reply on; it must equal scoring.response_logps and a
    loop over every reply token's log-softmax, for replies of different lengths and starts in one padded batch."""
    model = build_model("llama")
    batch = [S.Encoded((95, 5, 6, 7, 8, 9, 97), 4), S.Encoded((95, 11, 12, 13, 14, 15, 16, 17, 97), 3),
             S.Encoded((95, 20, 21, 97), 2)]
    with torch.no_grad():
        got, n = R.logps(model, batch, pad_id=0)
        full, _ = S.response_logps(model, batch, pad_id=0)
        by_hand = []
        for e in batch:
            logits = model(input_ids=torch.tensor([e.ids])).logits[0]  # (position, vocab), unpadded
            by_hand.append(sum(float(torch.log_softmax(logits[t - 1], -1)[e.ids[t]]) for t in range(e.start, len(e.ids))))
    assert n.tolist() == [3, 6, 2]
    assert got.tolist() == pytest.approx(by_hand, abs=1e-4)
    assert got.tolist() == pytest.approx(full.tolist(), abs=1e-5)


def test_degeneracy_measures_on_known_replies():
    assert E.distinct([1, 2, 3, 4]) == 1.0 and E.distinct([7, 7, 7, 7]) == 0.25 and E.distinct([]) == 0.0
    assert E.repeated_trigrams([1, 2, 3, 1, 2, 3]) == pytest.approx(1 - 3 / 4)  # (1,2,3) seen twice of 4 grams
    assert E.repeated_trigrams([1, 2, 3, 4]) == 0.0


def test_the_classifier_counts_every_template_refusal_and_no_plain_answer():
    rng = __import__("random").Random(0)
    assert all(D.is_refusal(D.refusal(rng, g)) for _, g in D.HARMFUL for _ in range(10))
    answer = "To pick a ripe melon, press the end opposite the stem: it should give a little, and it should smell sweet. "
    assert len(answer) > D.REFUSAL_WINDOW and not D.is_refusal(answer + "I can't stress this enough: smell it.")
    assert D.is_refusal("I\u2019m sorry, but I can\u2019t help with that.")  # curly apostrophes as well


def test_the_shipped_data_matches_its_manifest_and_generator():
    manifest, splits = R.read_data(SHIPPED / "data")  # every SHA-256 checked
    regenerated = D.build(manifest["seed"])
    for name, rows in splits.items():
        key = D.GENERATED[name]  # the base model's reply; every other field comes from the seeded templates
        assert [{k: v for k, v in r.items() if k != key} for r in rows] == regenerated[name], name
        assert all(r[key] for r in rows), f"{name}: an empty base reply"
    assert manifest["counts"] == {n: len(r) for n, r in splits.items()}
    train_topics = {r["topic"] for r in splits["harmful_train"] + splits["benign_train"]}
    assert len(manifest["heldout_topics"]) == D.HELDOUT_TOPICS
    assert train_topics.isdisjoint(r["topic"] for r in splits["harmful_heldout"] + splits["benign_heldout"])
    audit = D.read_jsonl(SHIPPED / "prompts" / "audit.jsonl")
    held = splits["harmful_heldout"] + splits["benign_heldout"]
    assert [(a["id"], a["prompt"], a["response"]) for a in audit] == [
        (r["id"], r["prompt"], r.get("rejected", r.get("base_reply"))) for r in held]


def test_the_shipped_eval_md_is_the_rendering_of_eval_json_and_its_rates_are_its_replies(report):
    assert (SHIPPED / "EVAL.md").read_text() == E.markdown(report) + "\n"
    harm = [k for k in report["prompts"] if k.startswith("harm")]
    benign = [k for k in report["prompts"] if k.startswith("benign")]
    assert (len(harm), len(benign)) == (report["n_heldout_harmful"], report["n_heldout_benign"])
    for c in report["checkpoints"]:  # the rates are the classifier applied to the replies stored beside them
        assert c["refusal_harmful"] == pytest.approx(E.mean(D.is_refusal(c["replies"][k]) for k in harm)), c["name"]
        assert c["refusal_benign"] == pytest.approx(E.mean(D.is_refusal(c["replies"][k]) for k in benign)), c["name"]


def test_the_shipped_adapters_are_the_ones_evaluated_and_small(report):
    manifest = json.loads((SHIPPED / "data" / "manifest.json").read_text())
    names = [c["name"] for c in report["checkpoints"][1:]]
    assert names == report["training"]["adapters"] and names[-1] == "dpo-overtrained"
    for name in names:
        folder = SHIPPED / "adapters" / name
        lineage = json.loads((folder / R.LINEAGE_FILE).read_text())
        assert lineage["adapter_sha256"] == D.sha256(folder / "adapter_model.safetensors"), name
        assert lineage["data_sha256"] == manifest["sha256"] and lineage["base"]["sha256"] == manifest["base"]["sha256"]
    assert sum(f.stat().st_size for f in (SHIPPED / "adapters").rglob("*") if f.is_file()) < 8e6


@pytest.fixture(scope="module")
def base():
    from spinal.capture.load import load

    torch.set_num_threads(1)
    return load(str(real_model()), dtype="float32", device_map="cpu")


def test_the_shipped_adapters_merge_through_spinals_loader_and_reproduce_their_evaluation(base, report):
    """Each adapter, merged by spinal (as `spinal capture --adapter` does), changes the base's logits, and greedy
    decoding of the first held-out harmful prompt starts as eval.json recorded it for that checkpoint."""
    from spinal.capture.load import merge_adapter

    tok, pid = base.tokenizer, next(k for k in report["prompts"] if k.startswith("harm"))
    ids = torch.tensor([R.prompt_ids(tok, report["prompts"][pid])])
    with torch.no_grad():
        base_logits = base.model(input_ids=ids).logits[0, -1]
    for c in report["checkpoints"][1:]:
        merged, info = merge_adapter(copy.deepcopy(base.model), str(SHIPPED / "adapters" / c["name"]))
        assert info["r"] == report["training"]["config"]["rank"]
        with torch.no_grad():
            assert (merged(input_ids=ids).logits[0, -1] - base_logits).abs().max() > 0.05, c["name"]
        reply = tok.decode(R.greedy(merged, tok, [report["prompts"][pid]], max_new=8)[0], skip_special_tokens=True)
        assert c["replies"][pid].startswith(reply.strip()), (c["name"], reply, c["replies"][pid])


def test_the_audit_config_names_the_base_then_every_shipped_adapter_in_training_order(report):
    from spinal.config import load_run_config

    cfg = load_run_config(str(ROOT / "configs" / "smollm2-dpo.toml"))
    assert [c.label for c in cfg.checkpoints] == [c["name"] for c in report["checkpoints"]]
    assert all(Path(c.path).name == GGUF.name for c in cfg.checkpoints) and cfg.checkpoints[0].adapter is None
    assert [Path(c.adapter) for c in cfg.checkpoints[1:]] == [SHIPPED / "adapters" / c.label for c in cfg.checkpoints[1:]]
    assert Path(cfg.prompts) == SHIPPED / "prompts" / "audit.jsonl" and cfg.capture.chat_template


def test_the_two_process_evaluation_gives_the_serial_figures(base):
    """The regeneration measures the later adapters in a second process (its own base): every figure, reply and
    reward equals what one process measuring them in turn gives."""
    from dataclasses import replace

    _, splits = R.read_data(R.DATA)
    names, cfg = ["dpo-step0008", "dpo-overtrained"], replace(R.SHORT, n_eval=1, max_new_tokens=4)

    def run(parallel: bool) -> list[dict]:
        rep = E.evaluate(copy.deepcopy(base.model), base.tokenizer, splits, SHIPPED / "adapters", names, cfg, {},
                         parallel=parallel)
        return [{k: v for k, v in c.items() if k != "wall_s"} for c in rep["checkpoints"]]

    serial, parallel = run(False), run(True)
    assert [c["name"] for c in parallel] == ["base", *names]
    assert parallel == serial
    assert parallel[2]["replies"] != parallel[0]["replies"] and parallel[2]["reward_margin"] != 0  # adapters applied
