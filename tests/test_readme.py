"""The README's and docs' command blocks run as written (placeholder paths replaced by tiny checkpoints), in fresh
folders, so a renamed flag or config field fails here before a reader meets it.

Run here: the README's five-minute path (its shell block line by line, its run config and both `spinal run` lines),
its notebook block, and the blocks of docs/usage.md and docs/store-format.md. `spinal` lines go through the CLI's
entry point in this process (`spinal --version` in a fresh one checks the installed script itself, tests/spinal);
Python blocks run as scripts, so a missing ``__main__`` guard fails as it would for a user. Not run here, each for
its reason: the two set-up commands (CI runs them: .ci/run), the demo (minutes; tests/cluster runs it on a small
config), the cluster block (needs a Ray cluster; tests/cluster simulates one) and the SmolLM2 block
(tests/reference).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
USAGE = ROOT / "docs" / "usage.md"
STORE_FORMAT = ROOT / "docs" / "store-format.md"
FIVE_MINUTES = "Your own model in five minutes"
RUN_SECTION = "All of it from one file: `spinal run`"
DATA_SECTION = "Your data as you keep it"


def blocks(page: Path, section: str, lang: str) -> list[str]:
    """The fenced ``lang`` blocks right under the heading ``section`` of ``page`` (up to the next heading; a `#`
    line inside a fenced block is no heading)."""
    text = page.read_text(encoding="utf-8")
    head = re.search(rf"^#+ {re.escape(section)}\s*$", text, re.M)
    assert head, f"{page.name} has no section {section!r}"
    rest = text[head.end():]
    unfenced = re.sub(r"^```.*?^```", lambda m: " " * len(m.group(0)), rest, flags=re.M | re.S)
    stop = re.search(r"^#+ ", unfenced, re.M)
    body = rest[: stop.start()] if stop else rest
    return re.findall(rf"^```{lang}\n(.*?)^```", body, re.M | re.S)


def user_folder(d: Path, checkpoint) -> Path:
    """A user's folder: checkpoints where the docs say path/to/…, and a prompt file."""
    for name, seed in (("checkpoint", 0), ("base", 0), ("dpo-checkpoint", 1), ("dpo", 1)):
        shutil.copytree(checkpoint("llama", seed=seed), d / "path" / "to" / name)
    rows = [{"id": f"q{i}", "prompt": f"Request {i}: explain item {i * 7 % 13} kindly.", "response": f"Item {i}."}
            for i in range(16)]
    write_jsonl(d / "prompts.jsonl", rows)
    return d


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, checkpoint):
    """The README reader's folder."""
    return user_folder(tmp_path_factory.mktemp("readme"), checkpoint)


@pytest.fixture(scope="module")
def usage_dir(tmp_path_factory, checkpoint):
    """The docs/usage.md reader's folder."""
    return user_folder(tmp_path_factory.mktemp("usage"), checkpoint)


def _sh(line: str, cwd: Path, monkeypatch) -> subprocess.CompletedProcess:
    """One `spinal` line, in this process (a fresh interpreter per line would spend most of this test on
    importing torch): the CLI's own entry point, arguments split as the shell splits them."""
    from typer.testing import CliRunner

    from spinal.cli.app import app

    args = shlex.split(line)
    assert args[0] == "spinal", line
    if args[1] in ("capture", "analyze", "run"):
        args.append("--no-progress")
    monkeypatch.chdir(cwd)
    r = CliRunner().invoke(app, args[1:], catch_exceptions=False)
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def _lines(block: str) -> list[str]:
    """A block's commands, continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [re.sub(r"\s+#.*$", "", l).strip() for l in joined.splitlines() if l.strip() and not l.startswith("#")]


def _script(block: str, folder: Path, workdir: Path, tail: str = "") -> subprocess.CompletedProcess:
    """A Python block run as a script in a fresh folder that holds what the shell blocks' folder holds."""
    folder.mkdir()
    shutil.copy(workdir / "prompts.jsonl", folder)
    (folder / "path").symlink_to(workdir / "path")
    script = folder / "snippet.py"
    script.write_text(block + tail)
    return subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=600)


# --- README -----------------------------------------------------------------------------------------------------


def test_five_minute_path_runs_as_written(workdir, monkeypatch):
    (block,) = blocks(README, FIVE_MINUTES, "bash")
    lines = _lines(block)
    # bare `spinal` works only once the environment is active: the block says so before its first `spinal` line
    assert lines[0] == "source .venv/bin/activate", lines[0]
    assert "-m venv .venv" in (ROOT / "setup.sh").read_text()  # … and setup.sh makes that environment
    lines = lines[1:]
    assert [l.split()[1] for l in lines] == ["capture", "capture", "analyze", "analyze", "compare", "report"]
    for line in lines:
        r = _sh(line, workdir, monkeypatch)
        assert r.returncode == 0, (line, r.stderr)
    doc = json.loads((workdir / "cmp" / "compare.json").read_text())
    assert [p["other"] for p in doc["pairs"]] == ["dpo"]
    assert (workdir / "cmp" / "positions.csv").exists()  # --stores: where in the reply they differ
    assert doc["pairs"][0]["grad_concentration"] is not None  # --weights: the per-block parameter change
    assert "<html" in (workdir / "report" / "report.html").read_text()[:500].lower()


def test_run_config_runs_as_written(workdir, monkeypatch):
    """The run config as the README prints it, saved where the reader's checkpoints and prompts are, and both
    `spinal run` lines (the second with its overrides, which run.json records)."""
    (toml,) = blocks(README, RUN_SECTION, "toml")
    (bash,) = blocks(README, RUN_SECTION, "bash")
    name = re.search(r"^# (\S+\.toml)$", toml, re.M).group(1)  # the block names its file
    (workdir / name).write_text(toml)
    lines = _lines(bash)
    assert [shlex.split(l)[:3] for l in lines] == [["spinal", "run", name]] * 2
    for line in lines:
        r = _sh(line, workdir, monkeypatch)
        assert r.returncode == 0, (line, r.stderr)
    out = workdir / re.search(r'^out = "([^"]+)"', toml, re.M).group(1)
    record = json.loads((out / "run.json").read_text())
    assert (out / "report" / "report.html").exists()
    for item in re.findall(r"--set (\S+)", lines[1]):
        (key, value) = item.split("=")
        table, field = key.split(".")
        assert str(record[table][field]) == value, (item, record[table])


def test_dataset_block_runs_as_written(tmp_path, checkpoint, monkeypatch):
    """The datasets block, in a reader's folder where the Hub dataset it names is in the local Hugging Face cache
    (read offline) and chats/ is a folder of chat-row shards; the checkpoint has a chat template."""
    import datasets
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    from spinal.store.contract import Store

    d = user_folder(tmp_path / "reader", checkpoint)
    (block,) = blocks(README, DATA_SECTION, "bash")
    lines = _lines(block)
    repo = re.search(r"--prompts (\S+/\S+) ", lines[0]).group(1)
    snap = tmp_path / "hf" / f"datasets--{repo.replace('/', '--')}" / "snapshots" / ("ab" * 20)
    (snap / "data").mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("ab" * 20)
    for split, n in (("train", 80), ("test", 70)):
        datasets.Dataset.from_dict({"prompt": [f"Q{i}: is {i} even?" for i in range(n)],
                                    "chosen": [f"{'Yes' if i % 2 == 0 else 'No'}." for i in range(n)],
                                    "rejected": ["Who knows." for _ in range(n)]}
                                   ).to_parquet(str(snap / "data" / f"{split}-00000-of-00001.parquet"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (d / "chats").mkdir()
    for k in range(2):
        rows = [{"messages": [{"role": "user", "content": f"Hi {k}-{i}"}, {"role": "assistant", "content": "Hello"}]}
                for i in range(60)]
        write_jsonl(d / "chats" / f"train-0000{k}-of-00002.jsonl", rows)
    tok = AutoTokenizer.from_pretrained(d / "path" / "to" / "dpo")
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    tok.save_pretrained(d / "path" / "to" / "dpo")
    model = re.search(r"^spinal capture (\S+/\S+) --revision", lines[2]).group(1)  # a Hub model id, cached
    msnap = tmp_path / "hf" / f"models--{model.replace('/', '--')}" / "snapshots" / ("cd" * 20)
    shutil.copytree(d / "path" / "to" / "base", msnap)
    (msnap.parent.parent / "refs").mkdir()
    (msnap.parent.parent / "refs" / "main").write_text("cd" * 20)
    for line in lines:
        r = _sh(line, d, monkeypatch)
        assert r.returncode == 0, (line, r.stderr)
    assert Store.open(str(d / "smol.zarr")).meta["source"]["revision"] == "cd" * 20
    chosen, rejected = Store.open(str(d / "dpo-chosen.zarr")), Store.open(str(d / "dpo-rejected.zarr"))
    assert len(chosen.sequences()["prompt_id"]) == 64 == len(rejected.sequences()["prompt_id"])
    assert chosen.meta["prompts"]["source"]["split"] == "test" and chosen.meta["prompts"]["source"]["revision"] == "ab" * 20
    chat = Store.open(str(d / "dpo-chat.zarr"))
    assert chat.meta["prompts"]["source"]["layout"] == "chat messages" and chat.meta["identity"]["chat_template"]
    assert len(chat.sequences()["prompt_id"]) == 100


def test_bucket_block_runs_as_written(tmp_path, checkpoint, bucket, monkeypatch):
    """The bucket block against the local S3 server (the bucket it names is made there first)."""
    from spinal.store.contract import Store

    d = user_folder(tmp_path / "reader", checkpoint)
    (block,) = blocks(README, "Stores in a bucket", "bash")
    lines = _lines(block)
    name = re.search(r"s3://([^/]+)/", lines[0]).group(1)
    bucket.client.create_bucket(Bucket=name)
    for line in lines:
        r = _sh(line, d, monkeypatch)
        assert r.returncode == 0, (line, r.stderr)
    url = re.search(r"(s3://\S+)", lines[0]).group(1)
    assert Store.open(url).complete and (d / "traces" / "dpo-from-bucket" / "trace.json").exists()


def test_notebook_block_runs_as_a_script(workdir):
    (block,) = blocks(README, "From a notebook", "python")
    r = _script(block, workdir / "notebook", workdir)
    assert r.returncode == 0, r.stderr
    assert "L_mean" in r.stdout and "d_a_lo" in r.stdout
    report = Path(r.stdout.strip().splitlines()[-1])  # spinal.report's return value
    assert report.name == "report.html" and (workdir / "notebook" / report).exists()
    assert (workdir / "notebook" / "cmp" / "compare.json").exists()


# --- docs/usage.md ----------------------------------------------------------------------------------------------


def test_capture_block_runs_as_written(usage_dir, monkeypatch):
    (block,) = blocks(USAGE, "Capture", "bash")
    lines = _lines(block)
    assert [l.split()[1] for l in lines] == ["capture", "capture", "capture", "inspect", "verify"]
    r = _sh(lines[0], usage_dir, monkeypatch)
    assert r.returncode == 0, r.stderr
    gpu = _sh(lines[1], usage_dir, monkeypatch)  # --device-map auto --max-memory for two GPUs: on a CPU-only machine, refused
    if gpu.returncode != 0:
        err = [l for l in gpu.stderr.splitlines() if l.strip()]
        assert gpu.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), gpu.stderr
        assert "Traceback" not in gpu.stderr
        r = _sh(lines[1].split(" --device-map")[0], usage_dir, monkeypatch)  # the same capture without the GPU map
        assert r.returncode == 0, r.stderr
    resume = lines[2].replace("…", "path/to/checkpoint --prompts prompts.jsonl --out base.zarr")
    r = _sh(resume, usage_dir, monkeypatch)
    assert r.returncode == 0 and "already done" in r.stderr, r.stderr
    for line in lines[3:]:
        r = _sh(line, usage_dir, monkeypatch)
        assert r.returncode == 0, (line, r.stderr)
    assert "no damage" in r.stdout  # verify's verdict


def test_python_capture_block_runs_as_a_script(usage_dir):
    (block,) = blocks(USAGE, "Capture", "python")
    r = _script(block, usage_dir / "py-capture", usage_dir,
                "\nprint('logp', tuple(logp.shape), float(logp.exp().sum(-1).mean()))\n")
    assert r.returncode == 0, r.stderr
    shape, total = r.stdout.split("(")[1].split(")")
    assert float(total) == pytest.approx(1.0, abs=1e-5)  # rows of a softmax


def test_analyze_blocks_run_as_written(usage_dir, monkeypatch):
    bash, python = blocks(USAGE, "Analyze, compare, report", "bash"), blocks(USAGE, "Analyze, compare, report", "python")
    lines = [l for l in _lines(bash[0]) if not l.startswith("spinal run")]
    assert [l.split()[1] for l in lines] == ["analyze", "analyze", "compare", "report"]
    assert (usage_dir / "base.zarr").exists() and (usage_dir / "dpo.zarr").exists(), "run the capture block first"
    for line in lines:
        r = _sh(line, usage_dir, monkeypatch)
        assert r.returncode == 0, (line, r.stderr)
    assert (usage_dir / "cmp" / "compare.json").exists()
    assert (usage_dir / "report" / "report.html").exists()
    script = usage_dir / "snippet_analyze.py"
    script.write_text(python[0])
    r = subprocess.run([sys.executable, str(script)], cwd=usage_dir, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "d_a_lo" in r.stdout and "L_mean" in r.stdout


def test_store_format_block_runs_as_written(usage_dir):
    (block,) = blocks(STORE_FORMAT, "The store format (for other tools)", "python")
    assert (usage_dir / "base.zarr").exists(), "run the capture block first"
    script = usage_dir / "snippet_store.py"
    script.write_text(block + "\nprint(h.dtype, h.shape)\n")
    r = subprocess.run([sys.executable, str(script)], cwd=usage_dir, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "float32"


def test_chosen_against_rejected_block_runs_as_written(tmp_path, checkpoint, monkeypatch):
    """docs/usage.md's recipe "did DPO change how the model represents the replies it was trained to prefer?":
    its loop over the reference family's checkpoints, on two tiny checkpoints in their place and a small TRL file
    in place of the held-out pairs; each checkpoint's two sides are compared paired by prompt, and reported so."""
    (block,) = blocks(USAGE, "Chosen against rejected inside one checkpoint", "bash")
    lines = _lines(block)
    head = re.fullmatch(r"for ck in (.+); do", lines[0])
    assert head and lines[-1] == "done", lines
    names = head.group(1).split()
    for name, seed in zip(names, (0, 1), strict=True):
        shutil.copytree(checkpoint("llama", seed=seed), tmp_path / "reference" / "checkpoints" / name)
    (tmp_path / "reference" / "data").mkdir()
    write_jsonl(tmp_path / "reference" / "data" / "heldout_pairs.jsonl",
                [{"prompt": f"User: what is {i} times two?\nAssistant:", "chosen": f" It is {2 * i}, since {i} + {i} = "
                  f"{2 * i}.", "rejected": " No idea." if i % 3 else f" {i}."} for i in range(20)])
    for ck in names:
        for line in lines[1:-1]:
            r = _sh(line.replace("$ck", ck), tmp_path, monkeypatch)
            assert r.returncode == 0, (line, r.stderr)
        doc = json.loads((tmp_path / "pairs" / f"cmp-{ck}" / "compare.json").read_text())
        assert doc["pairing"] == ["prompt"] and doc["labels"] == [f"{ck}-chosen", f"{ck}-rejected"]
        html = (tmp_path / "pairs" / f"report-{ck}" / "report.html").read_text()
        assert f"{ck}-rejected − {ck}-chosen is paired by prompt, not by token" in html


DPO_SCRIPT = '''\
# a user's TRL script, up to the point where the README's lines go (a tiny model and preference set)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

model = AutoModelForCausalLM.from_pretrained("path/to/base")
tok = AutoTokenizer.from_pretrained("path/to/base")
tok.pad_token = tok.eos_token
pairs = Dataset.from_dict({"prompt": [f"Question {i}?" for i in range(16)],
                           "chosen": [f" Yes, {i}." for i in range(16)], "rejected": [f" No {i}!" for i in range(16)]})
args = DPOConfig(output_dir="path/to/run", max_steps=4, save_steps=2, per_device_train_batch_size=4, report_to=[],
                 use_cpu=True, disable_tqdm=True, save_only_model=True, max_length=64)
trainer = DPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tok)
'''


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_watch_a_training_run_blocks_run_as_written(workdir, tmp_path, monkeypatch):
    """The callback's lines at the end of a DPO script (run as a script, as a user runs one), then the `spinal
    watch` line on the checkpoints that run saved."""
    python, bash = blocks(README, "Watch a training run", "python"), blocks(README, "Watch a training run", "bash")
    assert len(python) == 1 and len(bash) == 1
    r = _script(DPO_SCRIPT + python[0], tmp_path / "script", workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(l) for l in (tmp_path / "script" / "audit" / "series.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [2, 4]
    assert (tmp_path / "script" / "audit" / "report" / "report.html").is_file()
    (line,) = _lines(bash[0])
    r = _sh(line, tmp_path / "script", monkeypatch)
    assert r.returncode == 0, r.stderr
    watched = [json.loads(l) for l in (tmp_path / "script" / "watch-audit" / "series.jsonl").read_text().splitlines()]
    assert [x["step"] for x in watched] == [2, 4]
