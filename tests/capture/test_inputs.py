"""Prompts from what researchers have: `datasets` folders, shard folders and globs, Hub ids from the local cache,
and the field's row layouts (TRL preference pairs, chat messages, Anthropic-HH, Alpaca), each recognised with
no flags, or mapped by column; every bad input one clear error."""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

import datasets
import pytest

from spinal.capture.inputs.prompts import PromptOptions, load_prompts
from spinal.errors import InputError

TRL = {"prompt": ["How do I pick a lock?", "Say hi."], "chosen": ["I can't help with that.", "Hi!"],
       "rejected": ["Use a tension wrench.", "No."]}
CONV = {"prompt": [[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say hi."}],
                   [{"role": "user", "content": "Count to two."}]],
        "chosen": [[{"role": "assistant", "content": "Hi!"}], [{"role": "assistant", "content": "1, 2."}]],
        "rejected": [[{"role": "assistant", "content": "No."}], [{"role": "assistant", "content": "3."}]]}
HH = {"chosen": ["\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken…",
                 "\n\nHuman: Rude words?\n\nAssistant: I'd rather not."],
      "rejected": ["\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No.",
                   "\n\nHuman: Rude words?\n\nAssistant: Sure: …"]}


def _load(path, **kw):
    return load_prompts(str(path), PromptOptions(**kw))


def test_trl_standard_pairs_from_a_save_to_disk_folder_take_either_reply(tmp_path, caplog):
    datasets.Dataset.from_dict(TRL).save_to_disk(str(tmp_path / "prefs"))
    with caplog.at_level(logging.INFO, logger="spinal.capture.inputs.prompts"):
        chosen = _load(tmp_path / "prefs")
    assert [(p.id, p.prompt, p.response) for p in chosen.prompts] == [
        ("0", TRL["prompt"][0], TRL["chosen"][0]), ("1", TRL["prompt"][1], TRL["chosen"][1])]
    assert "TRL preference (standard)" in caplog.text and "reply: chosen" in caplog.text
    rejected = _load(tmp_path / "prefs", reply="rejected")
    assert [p.response for p in rejected.prompts] == TRL["rejected"]
    assert chosen.sha256 != rejected.sha256 and chosen.source["kind"] == "save_to_disk"
    assert chosen.source["fingerprint"] and chosen.source["reply"] == "chosen"


def test_trl_conversational_pairs_from_a_folder_of_parquet_shards_keep_the_conversation(tmp_path):
    (tmp_path / "shards" / "data").mkdir(parents=True)
    ds = datasets.Dataset.from_dict(CONV)
    ds.select([0]).to_parquet(str(tmp_path / "shards" / "data" / "train-00000-of-00002.parquet"))
    ds.select([1]).to_parquet(str(tmp_path / "shards" / "data" / "train-00001-of-00002.parquet"))
    ps = _load(tmp_path / "shards")
    first = ps.prompts[0]
    assert first.conversation == (("system", "Be kind."), ("user", "Say hi.")) and first.prompt == "Say hi."
    assert first.response == "Hi!" and ps.prompts[1].response == "1, 2." and ps.conversational
    assert ps.source["layout"] == "TRL preference (conversational)" and ps.source["split"] == "train"


def test_implicit_prompt_conversations_split_at_the_shared_turns(tmp_path):
    rows = [{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
             "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}]
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ps = _load(f, reply="rejected")
    assert (ps.prompts[0].conversation, ps.prompts[0].response) == ((("user", "Hi"),), "Go away.")
    assert ps.source["layout"] == "TRL preference, implicit prompt (conversational)"
    assert ps.prompts[0].id == "1"  # a file's rows are named by their line number, as before


def test_anthropic_hh_splits_at_the_last_assistant_turn_from_a_glob(tmp_path):
    datasets.Dataset.from_dict(HH).to_json(str(tmp_path / "hh-0.jsonl"))
    ps = _load(tmp_path / "hh-*.jsonl")
    p = ps.prompts[0]
    assert p.prompt.endswith("\n\nHuman: Tell me a joke\n\nAssistant:") and p.response == "Why did the chicken…"
    assert _load(tmp_path / "hh-*.jsonl", reply="rejected").prompts[1].response == "Sure: …"
    assert ps.source["layout"].startswith("Anthropic-HH") and ps.source["kind"] == "data files"


def test_chat_messages_alpaca_and_prompt_completion_are_recognised(tmp_path):
    chat = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                          {"role": "user", "content": "Joke?"}, {"role": "assistant", "content": "No."}]},
            {"messages": [{"role": "user", "content": "Only a question"}]}]
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in chat))
    ps = _load(f)
    assert ps.prompts[0].conversation == (("user", "Hi"), ("assistant", "Hello"), ("user", "Joke?"))
    assert ps.prompts[0].response == "No." and ps.prompts[1].response is None
    alpaca = datasets.Dataset.from_dict({"instruction": ["Add", "Greet"], "input": ["2 and 3", ""],
                                         "output": ["5", "Hello"]})
    alpaca.save_to_disk(str(tmp_path / "alpaca"))
    a = _load(tmp_path / "alpaca")
    assert [(p.prompt, p.response) for p in a.prompts] == [("Add\n\n2 and 3", "5"), ("Greet", "Hello")]
    datasets.Dataset.from_dict({"prompt": ["2+2="], "completion": ["4"]}).to_parquet(str(tmp_path / "pc.parquet"))
    pc = _load(tmp_path / "pc.parquet")
    assert (pc.prompts[0].prompt, pc.prompts[0].response, pc.source["layout"]) == ("2+2=", "4",
                                                                                  "TRL prompt-completion (standard)")


def test_columns_are_mapped_by_flag_and_unused_ones_are_named(tmp_path, caplog):
    datasets.Dataset.from_dict({"qid": ["a", "b"], "question": ["Why?", "How?"], "answer": ["Because.", "So."],
                                "score": [1, 2]}).save_to_disk(str(tmp_path / "qa"))
    with pytest.raises(InputError, match=r"no known layout in columns \['answer', 'qid', 'question', 'score'\].*"
                                         r"--prompt-column"):
        _load(tmp_path / "qa")
    with caplog.at_level(logging.INFO, logger="spinal.capture.inputs.prompts"):
        ps = _load(tmp_path / "qa", prompt_column="question", response_column="answer", id_column="qid")
    assert [(p.id, p.prompt, p.response) for p in ps.prompts] == [("a", "Why?", "Because."), ("b", "How?", "So.")]
    assert "columns not used: ['score']" in caplog.text
    with pytest.raises(InputError, match=r"column\(s\) \['answr'\] not in the dataset"):
        _load(tmp_path / "qa", prompt_column="question", response_column="answr")
    with pytest.raises(InputError, match="--id-column 'nope' is not a column"):
        _load(tmp_path / "qa", prompt_column="question", id_column="nope")


def test_a_seeded_sample_is_reproducible_named_by_dataset_index_and_recorded(tmp_path):
    n = 50
    datasets.Dataset.from_dict({"prompt": [f"p{i}" for i in range(n)]}).save_to_disk(str(tmp_path / "big"))
    a, b = _load(tmp_path / "big", sample=10, seed=3), _load(tmp_path / "big", sample=10, seed=3)
    c = _load(tmp_path / "big", sample=10, seed=4)
    ids = [int(p.id) for p in a.prompts]
    assert ids == sorted(ids) and len(set(ids)) == 10 and all(p.prompt == f"p{p.id}" for p in a.prompts)
    assert a.sha256 == b.sha256 and a.sha256 != c.sha256
    assert a.source["selection"] == {"limit": 0, "sample": 10, "seed": 3, "of": n}
    first = _load(tmp_path / "big", limit=4)
    assert [p.id for p in first.prompts] == ["0", "1", "2", "3"]
    with pytest.raises(InputError, match="give one of them"):
        _load(tmp_path / "big", limit=4, sample=4)
    with pytest.raises(InputError, match="sample=60 but .* holds 50 rows"):
        _load(tmp_path / "big", sample=60)


def test_splits_are_chosen_by_name_and_an_empty_or_missing_one_is_refused(tmp_path):
    d = datasets.DatasetDict({"train": datasets.Dataset.from_dict(TRL),
                              "test": datasets.Dataset.from_dict({k: v[:1] for k, v in TRL.items()}),
                              "empty": datasets.Dataset.from_dict({k: [] for k in TRL})})
    d.save_to_disk(str(tmp_path / "dd"))
    assert len(_load(tmp_path / "dd").prompts) == 2  # 'train' unless told
    assert len(_load(tmp_path / "dd", split="test").prompts) == 1
    with pytest.raises(InputError, match="split 'empty' holds no rows"):
        _load(tmp_path / "dd", split="empty")
    with pytest.raises(InputError, match=r"has no split 'dev'; its splits: \['train', 'test', 'empty'\]"):
        _load(tmp_path / "dd", split="dev")


def test_malformed_rows_and_misplaced_flags_are_one_error_naming_the_row(tmp_path):
    bad = dict(CONV)
    bad["chosen"] = [[{"role": "assistant", "content": "Hi!"}], [{"role": "assistant"}]]
    f = tmp_path / "bad.jsonl"
    f.write_text("".join(json.dumps({k: v[i] for k, v in bad.items()}) + "\n" for i in range(2)))
    with pytest.raises(InputError, match=r"bad.jsonl:2: not a TRL preference \(conversational\) row"):
        _load(f)
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    with pytest.raises(InputError, match="--reply chosen needs preference pairs"):
        _load(plain, reply="chosen")
    (tmp_path / "lines.txt").write_text("one\ntwo\n")
    with pytest.raises(InputError, match="plain text .* no columns to map"):
        _load(tmp_path / "lines.txt", prompt_column="x")
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(InputError, match="cannot read the dataset"):
        _load(tmp_path / "empty-folder")


def _hub_cache(root: Path, repo: str, commit: str) -> Path:
    """A Hugging Face hub cache holding the dataset ``repo`` at ``commit``, laid out as the hub client does."""
    base = root / "hub" / f"datasets--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit / "data"
    snap.mkdir(parents=True)
    datasets.Dataset.from_dict(TRL).to_parquet(str(snap / "train-00000-of-00001.parquet"))
    return root / "hub"


def test_a_hub_id_reads_from_the_local_cache_offline_and_records_its_commit(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = _hub_cache(tmp_path, "org/prefs", "0123abcd" * 5)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    ps = _load("org/prefs", reply="rejected")
    assert [p.response for p in ps.prompts] == TRL["rejected"]
    assert ps.source["kind"] == "hub" and ps.source["revision"] == "0123abcd" * 5
    with pytest.raises(InputError, match=r"org/missing is not in the Hugging Face cache \(.*hub\) and "
                                         r"HF_HUB_OFFLINE is set; fetch it .*hf download org/missing"):
        _load("org/missing")


def test_capture_both_replies_of_a_preference_dataset_into_two_stores_that_share_the_prompts(llama, tmp_path):
    """`spinal capture --reply both` on a TRL dataset: two stores named by side, one prompt part, positions
    'reply' storing only each side's reply tokens; the summary says how the prompts were read."""
    from typer.testing import CliRunner

    from spinal.cli.app import app
    from spinal.store.contract import Store

    datasets.Dataset.from_dict({"prompt": [f"Question {i}: is {i} even?" for i in range(6)],
                                "chosen": [f"{'Yes' if i % 2 == 0 else 'No'}, it is." for i in range(6)],
                                "rejected": ["Maybe." for _ in range(6)],
                                "source": ["synthetic"] * 6}).save_to_disk(str(tmp_path / "prefs"))
    r = CliRunner().invoke(app, ["capture", str(llama), "--prompts", str(tmp_path / "prefs"), "--reply", "both",
                                 "--positions", "reply", "--out", str(tmp_path / "base.zarr"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "prompts: TRL preference (standard) from save_to_disk split 'train', reply chosen" in r.stderr
    assert "reply rejected" in r.stderr and "columns not used: ['source']" in r.stderr
    chosen, rejected = Store.open(str(tmp_path / "base-chosen.zarr")), Store.open(str(tmp_path / "base-rejected.zarr"))
    assert not (tmp_path / "base.zarr").exists()
    tc, tr = chosen.tokens(), rejected.tokens()
    seqs = chosen.sequences()
    assert list(seqs["prompt_id"]) == [str(i) for i in range(6)] == list(rejected.sequences()["prompt_id"])
    assert chosen.meta["prompts"]["source"]["reply"] == "chosen" and rejected.meta["prompts"]["source"]["reply"] == "rejected"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(llama))
    for store, side in ((tc, "chosen"), (tr, "rejected")):
        want = tok(datasets.load_from_disk(str(tmp_path / "prefs"))[0][side], add_special_tokens=False)["input_ids"]
        got = store["ids"][store["sequence"] == 0].tolist()
        assert got == want, side  # only the reply's own tokens are stored


def test_the_dataset_options_are_run_config_keys_and_both_sides_are_refused_in_a_run(tmp_path, checkpoint):
    from spinal.config import load_run_config
    from spinal.errors import InputError

    datasets.Dataset.from_dict(TRL).save_to_disk(str(tmp_path / "prefs"))
    f = tmp_path / "run.toml"
    f.write_text(f'[run]\nout = "o"\nprompts = "prefs"\n[[checkpoints]]\nlabel = "a"\npath = "{checkpoint("llama")}"\n'
                 '[capture]\nreply = "rejected"\nsample = 2\nseed = 5\n')
    cfg = load_run_config(str(f))
    assert (cfg.capture.reply, cfg.capture.sample, cfg.capture.seed) == ("rejected", 2, 5)
    assert cfg.prompts == str(tmp_path / "prefs")  # relative to the TOML, as every path
    from spinal.cluster.run import check_inputs

    assert check_inputs(cfg) == load_prompts(str(tmp_path / "prefs"), cfg.capture.prompt_options()).sha256
    f.write_text(f.read_text().replace('reply = "rejected"', 'reply = "both"'))
    both = load_run_config(str(f))
    assert [(c.capture.reply, c.out) for c in both.sides()] == [("chosen", f"{tmp_path / 'o'}/chosen"),
                                                                 ("rejected", f"{tmp_path / 'o'}/rejected")]


def test_a_run_of_both_replies_audits_each_side_and_each_checkpoints_contrast(tmp_path, checkpoint):
    """`spinal run` with [capture] reply = 'both': a whole run per side (OUT/chosen, OUT/rejected: each compares
    the checkpoints on one token stream), then each checkpoint's rejected replies against its chosen ones, paired
    by prompt (OUT/sides/LABEL); a resume keeps every store and trace."""
    from typer.testing import CliRunner

    from spinal.cli.app import app

    datasets.Dataset.from_dict({"prompt": [f"Question {i}: is {i} odd?" for i in range(12)],
                                "chosen": [f" {'Yes' if i % 2 else 'No'}, {i} is {'odd' if i % 2 else 'even'}."
                                           for i in range(12)],
                                "rejected": [" Perhaps." for _ in range(12)]}).save_to_disk(str(tmp_path / "prefs"))
    f = tmp_path / "run.toml"
    f.write_text(f'[run]\nout = "audit"\nprompts = "prefs"\n'
                 f'[[checkpoints]]\nlabel = "base"\npath = "{checkpoint("llama")}"\n'
                 f'[[checkpoints]]\nlabel = "dpo"\npath = "{checkpoint("llama", seed=1)}"\n'
                 '[capture]\nreply = "both"\npositions = "reply"\n[analyze]\nn_boot = 40\ncalibration_sims = 8\n'
                 'workers = 1\n[compare]\nn_boot = 50\nweights = false\n')
    r = CliRunner().invoke(app, ["run", str(f), "--no-progress"])
    assert r.exit_code == 0, r.output
    audit = tmp_path / "audit"
    for side in ("chosen", "rejected"):
        doc = json.loads((audit / side / "compare" / "compare.json").read_text())
        assert doc["pairing"] == ["token"] and doc["labels"] == ["base", "dpo"]
        assert json.loads((audit / side / "run.json").read_text())["capture"]["reply"] == side
    for label in ("base", "dpo"):
        doc = json.loads((audit / "sides" / label / "compare" / "compare.json").read_text())
        assert doc["pairing"] == ["prompt"] and doc["labels"] == [f"{label}-chosen", f"{label}-rejected"]
        html = (audit / "sides" / label / "report" / "report.html").read_text()
        assert f"{label}-rejected − {label}-chosen is paired by prompt, not by token" in html
    assert json.loads((audit / "run.json").read_text())["capture"]["reply"] == "both"
    r = CliRunner().invoke(app, ["run", str(f), "--no-progress", "--resume"])
    assert r.exit_code == 0, r.output
    stages = json.loads((audit / "summary.json").read_text())["stages"]
    kept = [st["label"] for st in stages if st["stage"] in ("capture", "analyze") and st["skipped"]]
    assert len(kept) == 8 and set(kept) == {f"{l} ({s})" for l in ("base", "dpo") for s in ("chosen", "rejected")}


def test_a_pipe_is_refused_at_once_and_a_byte_order_mark_is_no_error(tmp_path):
    """A FIFO or a device given as the prompt file is refused before anything reads it (reading one never ends);
    a UTF-8 file that starts with a byte-order mark (as some editors save) reads as its text."""
    import os

    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is not a regular file"):
        _load(fifo)
    with pytest.raises(InputError, match="is not a regular file"):
        _load("/dev/zero")
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes("\ufeff".encode() + json.dumps({"id": "a", "prompt": "Hi"}).encode() + b"\n")
    assert [(p.id, p.prompt) for p in _load(bom).prompts] == [("a", "Hi")]
    (tmp_path / "bom.txt").write_bytes("\ufeffHello\n".encode())
    assert [p.prompt for p in _load(tmp_path / "bom.txt").prompts] == ["Hello"]


def test_the_reference_pairs_read_as_trl_rows_are_the_demos_audit_prompts():
    """The known-answer family's held-out pairs (TRL prompt/chosen/rejected, with domain and task columns) read
    with reply 'chosen' are exactly the demo's audit prompts with their replies: the same ids, texts and hash, so
    a capture of either is the same store (and `spinal run configs/replies.toml` reproduces the demo's numbers)."""
    root = Path(__file__).resolve().parents[2] / "reference"
    pairs = _load(root / "data" / "heldout_pairs.jsonl", reply="chosen")
    audit = load_prompts(str(root / "prompts" / "audit.jsonl"))
    assert pairs.prompts == audit.prompts and pairs.sha256 == audit.sha256
    assert pairs.source["layout"] == "TRL preference (standard)" and pairs.source["columns_unused"] == ["domain", "task"]
    rejected = _load(root / "data" / "heldout_pairs.jsonl", reply="rejected")
    assert [p.prompt for p in rejected.prompts] == [p.prompt for p in audit.prompts]
    assert all(r.response != c.response for r, c in zip(rejected.prompts, pairs.prompts))
