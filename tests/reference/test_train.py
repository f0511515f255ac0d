"""The reference family: facts of a --short training run, and the shipped checkpoints and audit prompts.

Nothing here downloads: checkpoints are trained into tmp_path or read from reference/checkpoints/.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "reference"
if str(ROOT) not in sys.path:  # `reference` is a folder of scripts at the repository root, not installed
    sys.path.insert(0, str(ROOT))

from reference import data as D  # noqa: E402

EXPECTED_PARENT = {"base": None, "sft": "base"}  # every DPO checkpoint's parent is "sft"


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference-short")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "reference.train", "--short", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def family(folder: Path) -> tuple[list[str], list[str]]:
    """(all checkpoint names, the dpo-stepNNNN names by step) found in folder/checkpoints."""
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    steps = sorted((n for n in names if n.startswith("dpo-step")), key=lambda n: int(n.removeprefix("dpo-step")))
    return names, steps


def load(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def audit_lines(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "prompts" / "audit.jsonl").read_text(encoding="utf-8").splitlines()]


def check_loads(folder: Path, names: list[str]) -> None:
    """Each checkpoint loads offline as a ≥12-block Llama with bf16 safetensors and answers an audit prompt."""
    prompt = audit_lines(folder)[0]["prompt"]
    for name in names:
        path = folder / "checkpoints" / name
        assert (path / "model.safetensors").exists() and not list(path.glob("*.bin")), name
        with safe_open(path / "model.safetensors", "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}, name
        model, tokenizer = load(path)
        assert model.config.model_type == "llama" and model.config.num_hidden_layers >= 12, name
        ids = tokenizer(prompt, return_tensors="pt")
        assert ids["input_ids"][0, 0] == tokenizer.bos_token_id
        with torch.no_grad():
            logits = model(**ids).logits  # (sequence, position, vocab)
        assert logits.shape == (1, ids["input_ids"].shape[1], model.config.vocab_size)
        assert torch.isfinite(logits).all(), name


def check_disjoint(folder: Path) -> None:
    """Audit prompts come from held-out topics only: no audit prompt or topic occurs in training data."""
    manifest = json.loads((folder / "data" / "manifest.json").read_text(encoding="utf-8"))
    sizes = D.DataSizes(**manifest["sizes"])
    ds = D.build(manifest["seed"], sizes)
    assert ds.manifest(manifest["seed"], sizes)["sha256"] == manifest["sha256"]  # the generator is reproducible
    audit = audit_lines(folder)
    train_prompts = ds.training_requests()
    assert not {a["prompt"] for a in audit} & train_prompts
    train_topics = {d["task"] for d in ds.sft} | {d["task"] for d in ds.dpo}
    held_topics = {h["task"] for h in ds.heldout}
    assert held_topics and not held_topics & train_topics
    assert [a["response"] for a in audit] == [h["chosen"] for h in ds.heldout]
    D.check_heldout(ds)  # also scans the pre-training text for held-out topic phrases


def check_eval_table(folder: Path) -> dict:
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    report = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    assert sorted(r["name"] for r in report["checkpoints"]) == names
    table = (folder / "EVAL.md").read_text(encoding="utf-8")
    for name in names:
        assert f"| `{name}` | {EXPECTED_PARENT.get(name, 'sft') or '—'} |" in table, name
    return {r["name"]: r for r in report["checkpoints"]}


# ---- the --short run ------------------------------------------------------------------------

@pytest.mark.slow
def test_short_run_checkpoints_load_offline(short_run):
    names, steps = family(short_run)
    assert {"base", "sft", "dpo-overtrained"} <= set(names) and len(steps) >= 2
    assert len(names) == 3 + len(steps)
    check_loads(short_run, names)


@pytest.mark.slow
def test_short_run_lineage(short_run):
    """base → sft → dpo: records name the parents, and the weights agree with them."""
    names, steps = family(short_run)
    records = {n: json.loads((short_run / "checkpoints" / n / "spinal_reference.json").read_text()) for n in names}
    for name, rec in records.items():
        assert rec["parent"] == EXPECTED_PARENT.get(name, "sft"), name
        assert rec["weights_sha256"] == hashlib.sha256((short_run / "checkpoints" / name / "model.safetensors")
                                                       .read_bytes()).hexdigest(), name
    assert [records[n]["step"] for n in steps] == sorted(records[n]["step"] for n in steps)
    w = {n: flat(load(short_run / "checkpoints" / n)[0]) for n in names}
    dist = {(a, b): float((w[a] - w[b]).norm()) for a in w for b in w}
    assert dist[("sft", "base")] > 0
    for name in [*steps, "dpo-overtrained"]:
        assert dist[(name, "sft")] > 0, f"{name} has the SFT weights"
        assert dist[(name, "sft")] < dist[(name, "base")], f"{name} is not closer to sft than to base"
    # one DPO run: later checkpoints have moved further from sft
    assert [dist[(n, "sft")] for n in steps] == sorted(dist[(n, "sft")] for n in steps)
    # the over-trained run (a far higher learning rate, same steps) moves furthest
    assert dist[(steps[-1], "sft")] < dist[("dpo-overtrained", "sft")]


@pytest.mark.slow
def test_short_run_dpo_improves_heldout_preference(short_run):
    rows = check_eval_table(short_run)
    sft = rows["sft"]
    assert sft.get("reward_accuracy") is None  # no implicit reward for the reference itself
    for name in family(short_run)[1]:
        dpo = rows[name]
        assert dpo["loglik_accuracy"] >= sft["loglik_accuracy"], name
        assert dpo["reward_accuracy"] > 0.5 and dpo["reward_margin"] > 0, name
    final = rows[family(short_run)[1][-1]]
    assert final["loglik_accuracy_per_token"] > sft["loglik_accuracy_per_token"]


@pytest.mark.slow
def test_short_run_reward_matches_an_independent_computation(short_run):
    """eval.json's numbers, recomputed from joint tokenization of prompt + reply in float64."""
    rows = check_eval_table(short_run)
    final = family(short_run)[1][-1]
    pairs = [json.loads(x) for x in (short_run / "data" / "heldout_pairs.jsonl").read_text().splitlines()]
    pairs = pairs[: json.loads((short_run / "eval.json").read_text())["pairs"]]

    def logps(name: str) -> torch.Tensor:
        model, tok = load(short_run / "checkpoints" / name)
        out = []
        for p in pairs:
            row = []
            for reply in (p["chosen"], p["rejected"]):
                start = len(tok(p["prompt"])["input_ids"])
                ids = torch.tensor([tok(p["prompt"] + reply)["input_ids"] + [tok.eos_token_id]])
                with torch.no_grad():
                    lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                row.append(float(lp[torch.arange(start - 1, ids.shape[1] - 1), ids[0, start:]].sum()))
            out.append(row)
        return torch.tensor(out, dtype=torch.float64)  # (pair, chosen/rejected)

    ref, pol = logps("sft"), logps(final)
    beta = rows[final]["beta"]
    margin = beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
    assert rows[final]["reward_accuracy"] == pytest.approx(float((margin > 0).double().mean()))
    assert rows[final]["reward_margin"] == pytest.approx(float(margin.mean()), rel=1e-4, abs=1e-4)
    assert rows["sft"]["loglik_accuracy"] == pytest.approx(float((ref[:, 0] > ref[:, 1]).double().mean()))
    assert rows[final]["loglik_accuracy"] == pytest.approx(float((pol[:, 0] > pol[:, 1]).double().mean()))


@pytest.mark.slow
def test_short_run_audit_prompts_are_held_out(short_run):
    audit = audit_lines(short_run)
    assert len(audit) >= 256 and len({a["id"] for a in audit}) == len(audit)
    check_disjoint(short_run)


# ---- the shipped family ---------------------------------------------------------------------

def test_shipped_checkpoints_load():
    names, steps = family(SHIPPED)
    assert {"base", "sft", "dpo-overtrained"} <= set(names) and len(steps) >= 2
    check_loads(SHIPPED, names)
    size = sum(f.stat().st_size for f in (SHIPPED / "checkpoints").rglob("*") if f.is_file())
    assert size <= 40e6, f"reference/checkpoints holds {size / 1e6:.1f} MB; the budget is 40 MB"


def test_shipped_audit_prompts():
    audit = audit_lines(SHIPPED)
    assert len(audit) >= 256
    assert len({a["id"] for a in audit}) == len(audit)
    assert all(set(a) == {"id", "prompt", "response"} for a in audit)
    assert all(a["prompt"].startswith("User: ") and a["prompt"].endswith("\nAssistant:") for a in audit)
    check_disjoint(SHIPPED)


def test_shipped_eval_shows_the_alignment():
    """The measured behaviour change of the shipped family, as recorded in its eval.json."""
    rows = check_eval_table(SHIPPED)
    sft, final, over = rows["sft"], rows[family(SHIPPED)[1][-1]], rows["dpo-overtrained"]
    assert final["loglik_accuracy"] > sft["loglik_accuracy"] + 0.5
    assert final["reward_accuracy"] > 0.9
    assert final["greedy_polite"] > sft["greedy_polite"] + 0.5 and final["greedy_rude"] < sft["greedy_rude"]
    # the over-trained run is degenerate: its chosen replies and plain text became far less likely
    assert over["chosen_nll_per_token"] > 2 * final["chosen_nll_per_token"]
    assert over["text_nll_per_token"] > final["text_nll_per_token"] + 1


def test_the_series_schedule_is_the_family_run_then_a_geometric_ramp_to_30x():
    """reference/series.py: in each phase the optimizer's learning rate at every step equals the documented
    schedule (phase 1: warm-up, then constant 1e-4 at β 0.1; phase 2: 1e-4 ramped ×30 geometrically at β 0.01)."""
    import torch

    from reference.series import BREAK, HEALTHY, PHASES, lr_at
    from reference.train import optimizer

    seen = []
    for _, stage in PHASES:
        opt, sched = optimizer(torch.nn.Linear(2, 2), stage)
        for _ in range(stage.steps):
            seen.append(opt.param_groups[0]["lr"])  # the rate this optimizer step uses
            opt.step()
            sched.step()
    assert seen == pytest.approx([lr_at(s) for s in range(1, len(seen) + 1)], rel=1e-12)
    assert seen[HEALTHY.warmup] == pytest.approx(1e-4) and seen[HEALTHY.steps - 1] == pytest.approx(1e-4)
    assert seen[HEALTHY.steps] == pytest.approx(1e-4) and seen[-1] == pytest.approx(3e-3)
    assert (HEALTHY.beta, BREAK.beta) == (0.1, 0.01)
    assert len(HEALTHY.save_at) + len(BREAK.save_at) + 2 == 12  # every 25 steps, with each phase's last


def test_the_shipped_series_ground_truth_is_the_documented_schedule_and_breaks_after_step_150():
    """reference/series/ holds the ground truth of `python -m reference.series`: every saved step evaluated, the
    plain-text NLL drifting slowly through the healthy phase and jumping once β is cut."""
    import json
    from pathlib import Path

    d = Path(__file__).resolve().parents[2] / "reference" / "series"
    ev = json.loads((d / "eval.json").read_text())
    names = [c["name"] for c in ev["checkpoints"]]
    assert names == ["sft"] + [f"series-step{s:04d}" for s in range(25, 301, 25)]
    nll = {c["name"]: c["text_nll_per_token"] for c in ev["checkpoints"]}
    healthy = [nll[f"series-step{s:04d}"] for s in range(25, 151, 25)]
    assert max(b - a for a, b in zip(healthy, healthy[1:])) < 0.5  # slow drift while healthy
    assert nll["series-step0175"] - nll["series-step0150"] > 1.0  # the break
    assert set(json.loads((d / "series.json").read_text())["kl_to_sft"]) == set(names[1:])
