"""Bad-input battery: feed the `spinal` CLI many bad inputs and tally which give "one line, exit 2".

    python benchmarks/bad_inputs.py                      # every case (~190; ~20–25 min on 2 busy cores)
    python benchmarks/bad_inputs.py --jobs 2             # two cases at a time
    python benchmarks/bad_inputs.py --only prompts       # the cases whose family/name contains "prompts"
    python benchmarks/bad_inputs.py --workdir /tmp/bi --keep --json /tmp/bi.json

A case passes ("one line, exit 2") when

- the exit code is exactly 2,
- stderr holds exactly one non-empty line and it starts with ``error: `` (colour codes are stripped first),
- "Traceback" appears nowhere in stdout or stderr,
- every existing thing the case points the CLI at (a store, trace, comparison, report, run folder, a user's
  folder or file) has the same bytes afterwards: SHA-256 over every file (relative path + content), and
- where the case plants checkpoint code (``auto_map``), that code did not run.

A case that runs past ``--timeout`` seconds (default 120) is killed (its whole process group) and counted as a
"hang". Outputs a refused command left behind (a new store/trace folder that did not exist before) are recorded
as notes, not failures. Cases the CLI accepts by design (exit 0 expected) are listed separately with the reason
and are not counted among the bad inputs.

Setup (nothing is downloaded): two tiny random-weight Llama checkpoints (d=64, 3 blocks, 4 heads, 2 kv heads,
256 positions, vocab 128, char-level tokenizer, seeds 0 and 1; the approach of tests/conftest.py), 24 prompts as
JSONL, a store of each checkpoint, their traces, a comparison, a report, a 1-prompt store, and one small
``spinal run`` (two checkpoints). With ``--workdir`` the folder is kept and the setup is reused on the next call
(delete the folder to rebuild it); each case works in a fresh ``cases/<name>/`` folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))
from common import char_tokenizer, save_tiny_llama, tiny_llama  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SETUP_MARK = "setup-done.json"
SETUP_VERSION = 1


# -- the model (common.py: the tests' tiny Llama) and prompts -----------------------------------

def save_checkpoint(path: Path, seed: int = 0) -> Path:
    return save_tiny_llama(path, seed)


def save_pickle_checkpoint(path: Path, seed: int = 0) -> Path:
    """The same checkpoint with only pickle weights (pytorch_model.bin)."""
    import torch

    model = tiny_llama(seed)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    char_tokenizer(bos=True).save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def good_rows(n: int = 24, tag: str = "") -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"Please answer question {i}{tag} about topic {i % 5} politely."}
            for i in range(n)]


# -- running the CLI ------------------------------------------------------------------------------

def child_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               RAY_USAGE_STATS_ENABLED="0")
    return env


def run_cli(argv: list[str], cwd: Path, timeout: float) -> dict:
    """Run ``python -m spinal.cli ARGV`` in its own process group; kill the group on timeout."""
    cmd = [sys.executable, "-m", "spinal.cli", *argv]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        p = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                             start_new_session=True)
        hung = False
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            hung = True
        try:  # clear the child's group (also what it left running after exiting by itself)
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.wait()
        fo.seek(0)
        fe.seek(0)
        stdout = fo.read().decode("utf-8", "replace")
        stderr = fe.read().decode("utf-8", "replace")
    return {"rc": p.returncode, "hung": hung, "stdout": stdout, "stderr": stderr,
            "seconds": round(time.perf_counter() - t0, 2)}


def tree_hash(path: Path) -> str:
    """SHA-256 over every file under ``path`` (relative path + bytes); 'absent' when nothing is there."""
    if not path.exists() and not path.is_symlink():
        return "absent"
    h = hashlib.sha256()
    if path.is_file():
        h.update(b"F")
        h.update(path.read_bytes())
        return h.hexdigest()
    for f in sorted(path.rglob("*")):
        rel = str(f.relative_to(path)).encode()
        if f.is_symlink():
            h.update(b"L" + rel + b"\0" + os.readlink(f).encode() + b"\0")
        elif f.is_dir():
            h.update(b"D" + rel + b"\0")
        elif f.is_file():
            h.update(b"F" + rel + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def changed_files(path: Path, before: dict[str, str]) -> list[str]:
    now = file_digests(path)
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def file_digests(path: Path) -> dict[str, str]:
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "dir"
            for f in sorted(path.rglob("*"))}


def judge(res: dict) -> list[str]:
    """Why a result is not "one line, exit 2" (empty list: it is)."""
    if res["hung"]:
        return ["hang"]
    why = []
    stderr = ANSI.sub("", res["stderr"])
    lines = [l for l in stderr.splitlines() if l.strip()]
    if res["rc"] != 2:
        why.append(f"exit {res['rc']}")
    if len(lines) != 1:
        why.append(f"stderr has {len(lines)} non-empty lines")
    if lines and not lines[0].startswith("error: "):
        why.append("first stderr line does not start with 'error: '")
    if "Traceback" in res["stdout"] or "Traceback" in res["stderr"]:
        why.append("Traceback")
    return why


# -- the cases ------------------------------------------------------------------------------------

@dataclass
class Spec:
    """What a prepared case runs and checks."""

    argv: list[str]
    protect: list[Path] = field(default_factory=list)  # existing things whose bytes must not change
    must_not_exist: list[Path] = field(default_factory=list)  # e.g. a file planted checkpoint code would write
    new_outputs: list[Path] = field(default_factory=list)  # outputs that did not exist before (notes only)
    teardown: Callable[[], None] | None = None


@dataclass
class Case:
    family: str
    name: str
    prepare: Callable[[Path], Spec]  # given the case's fresh folder
    accepted: str | None = None  # reason the CLI accepts this by design (exit 0 expected)
    serial: bool = False  # touches the shared run folder: never alongside another case (--jobs)

    @property
    def key(self) -> str:
        return f"{self.family}/{self.name}"


class Work:
    """The work folder: the good artefacts every case starts from."""

    def __init__(self, root: Path):
        self.root = root
        self.model = root / "model"  # seed 0
        self.model1 = root / "model1"  # seed 1
        self.model_pickle = root / "model-pickle"
        self.prompts = root / "prompts.jsonl"
        self.prompts_other = root / "prompts-other.jsonl"
        self.one = root / "one.jsonl"
        self.long = root / "long.jsonl"
        self.S = root / "S.zarr"
        self.S1 = root / "S1.zarr"
        self.S_one = root / "S-one.zarr"
        self.T = root / "T"
        self.T1 = root / "T1"
        self.T_alt = root / "T-alt"
        self.C = root / "C"
        self.C_alt = root / "C-alt"
        self.R = root / "R"
        self.run_dir = root / "run1"
        self.run_toml = self.run_dir / "run.toml"

    def shared(self) -> list[Path]:
        """The setup's artefacts many cases point at (each case checks the ones it targets; this is the backstop)."""
        return [self.model, self.model1, self.model_pickle, self.prompts, self.prompts_other, self.one, self.long,
                self.S, self.S1, self.S_one, self.T, self.T1, self.T_alt, self.C, self.C_alt, self.R, self.run_dir]

    # the commands every setup step and many cases use
    def cap(self, model, prompts, out, *extra) -> list[str]:
        return ["capture", str(model), "-p", str(prompts), "-o", str(out), "--unit-tokens", "64", "--no-progress",
                *map(str, extra)]

    def ana(self, store, out, *extra) -> list[str]:
        return ["analyze", str(store), "-o", str(out), "--n-boot", "20", "--null-splits", "2", "--workers", "1",
                "--no-progress", *map(str, extra)]

    def cmp(self, traces, out, *extra) -> list[str]:
        return ["compare", *map(str, traces), "-o", str(out), "--n-boot", "50", *map(str, extra)]

    def run_text(self, out: str, prompts: str, ckpts: list[tuple[str, str]], extra: str = "") -> str:
        text = f'[run]\nout = "{out}"\nprompts = "{prompts}"\n'
        for label, path in ckpts:
            text += f'\n[[checkpoints]]\nlabel = "{label}"\npath = "{path}"\n'
        text += ("\n[capture]\nunit_tokens = 256\n\n[analyze]\nn_boot = 20\nworkers = 1\nnull_splits = 2\n"
                 "\n[compare]\nn_boot = 50\nweights = false\ncross_readout_tokens = 0\n")
        return text + extra

    def write_run(self, d: Path, out: str = "out", prompts: str | None = None, ckpts=None, extra: str = "",
                  name: str = "run.toml") -> Path:
        if prompts is None:
            write_jsonl(d / "prompts.jsonl", good_rows())
            prompts = "prompts.jsonl"
        if ckpts is None:
            ckpts = [("base", str(self.model)), ("tuned", str(self.model1))]
        f = d / name
        f.write_text(self.run_text(out, prompts, ckpts, extra))
        return f

    def setup(self, timeout: float) -> None:
        mark = self.root / SETUP_MARK
        if mark.is_file() and json.loads(mark.read_text()).get("version") == SETUP_VERSION:
            print(f"setup: reusing {self.root}", flush=True)
            return
        t0 = time.perf_counter()
        print("setup: checkpoints and prompt files", flush=True)
        for p, seed in ((self.model, 0), (self.model1, 1)):
            if not (p / "config.json").exists():
                save_checkpoint(p, seed)
        if not (self.model_pickle / "pytorch_model.bin").exists():
            save_pickle_checkpoint(self.model_pickle, 0)
        write_jsonl(self.prompts, good_rows())
        write_jsonl(self.prompts_other, good_rows(tag=" (other set)"))
        write_jsonl(self.one, good_rows(1))
        write_jsonl(self.long, [{"id": "long", "prompt": "A very long prompt. " * 30}])  # 600 chars > 256 positions
        steps = [
            ("capture S", self.cap(self.model, self.prompts, self.S, "--overwrite")),
            ("capture S1", self.cap(self.model1, self.prompts, self.S1, "--overwrite")),
            ("capture S-one", self.cap(self.model, self.one, self.S_one, "--overwrite")),
            ("analyze T", self.ana(self.S, self.T, "--label", "base", "--overwrite")),
            ("analyze T1", self.ana(self.S1, self.T1, "--label", "tuned", "--overwrite")),
            ("analyze T-alt", self.ana(self.S, self.T_alt, "--label", "base", "--overwrite")),
            ("compare C", self.cmp([self.T, self.T1], self.C, "--overwrite")),
            ("compare C-alt", self.cmp([self.T_alt, self.T1], self.C_alt, "--overwrite")),
            ("report R", ["report", str(self.T), str(self.T1), "-c", str(self.C), "-o", str(self.R), "--overwrite"]),
        ]
        self.run_dir.mkdir(exist_ok=True)
        self.write_run(self.run_dir)
        steps.append(("run run1", ["run", str(self.run_toml), "--no-progress", "--overwrite"]))
        for what, argv in steps:
            res = run_cli(argv, self.root, timeout=max(timeout, 600))
            print(f"setup: {what}: exit {res['rc']} ({res['seconds']:.1f} s)", flush=True)
            if res["rc"] != 0:
                sys.exit(f"setup step {what!r} failed (exit {res['rc']}):\n{res['stderr'][-3000:]}")
        mark.write_text(json.dumps({"version": SETUP_VERSION, "seconds": round(time.perf_counter() - t0, 1)}))


def copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True)
    else:
        shutil.copy2(src, dst)
    return dst


def modified(src: Path, name: str, fn: Callable[[Path], None]) -> Callable[[Path], Path]:
    """A case's input: a copy of ``src`` as ``name`` in the case folder, then changed by ``fn``."""
    def make(d: Path) -> Path:
        p = copy(src, d / name)
        fn(p)
        return p
    return make


def user_folder(d: Path, name: str = "mine") -> Path:
    """A folder of the user's that is not SPINAL's."""
    f = d / name
    (f / "sub").mkdir(parents=True)
    (f / "notes.txt").write_text("my notes, not SPINAL's\n")
    (f / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return f


def a_file(d: Path, name: str = "afile.txt") -> Path:
    f = d / name
    f.write_text("a file of the user's\n")
    return f


def other_zarr(d: Path, name: str = "other.zarr") -> Path:
    """Another tool's Zarr v3 group (an array and attributes, no SPINAL metadata)."""
    import numpy as np
    import zarr

    p = d / name
    g = zarr.open_group(str(p), mode="w", zarr_format=3)
    g.attrs["tool"] = "someone else's"
    g.create_array("x", data=np.arange(12, dtype="float32").reshape(3, 4))
    return p


def cases(w: Work) -> list[Case]:
    C: list[Case] = []

    def add(family: str, name: str, accepted: str | None = None, serial: bool = False):
        def deco(fn: Callable[[Path], Spec]):
            C.append(Case(family, name, fn, accepted, serial))
            return fn
        return deco

    # ---- prompt files (capture MODEL -p X -o NEW) -------------------------------------------
    def prompt_case(name: str, make: Callable[[Path], Path], *extra: str):
        @add("prompts", name)
        def _(d: Path) -> Spec:
            out = d / "out.zarr"
            return Spec(w.cap(w.model, make(d), out, *extra), new_outputs=[out])

    def wr(fname: str, data: bytes | str):
        def make(d: Path) -> Path:
            p = d / fname
            p.write_bytes(data if isinstance(data, bytes) else data.encode())
            return p
        return make

    def parquet(fname: str, table: dict):
        def make(d: Path) -> Path:
            import pyarrow as pa
            import pyarrow.parquet as pq

            p = d / fname
            pq.write_table(pa.table(table), p)
            return p
        return make

    binary = bytes(range(256)) * 8
    prompt_case("missing", lambda d: d / "nowhere.jsonl")
    prompt_case("folder", lambda d: (d / "pfolder").mkdir() or d / "pfolder")
    prompt_case("empty-jsonl", wr("p.jsonl", ""))
    prompt_case("empty-txt", wr("p.txt", ""))
    prompt_case("blank-lines-jsonl", wr("p.jsonl", "\n\n   \n\t\n"))
    prompt_case("blank-lines-txt", wr("p.txt", "\n \n\n   \n"))
    prompt_case("binary-jsonl", wr("p.jsonl", binary))
    prompt_case("binary-txt", wr("p.txt", binary))
    prompt_case("malformed-json-line", wr("p.jsonl", '{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": \n'))
    prompt_case("json-array-line", wr("p.jsonl", '{"id": "a", "prompt": "fine"}\n["not", "an", "object"]\n'))
    prompt_case("json-string-line", wr("p.jsonl", '"just a string"\n'))
    prompt_case("json-array-file", wr("p.json", json.dumps([{"id": "a", "prompt": "x"}], indent=2)))
    prompt_case("missing-prompt-field", wr("p.jsonl", '{"id": "a", "text": "no prompt key"}\n'))
    prompt_case("nonstring-prompt", wr("p.jsonl", '{"id": "a", "prompt": 42}\n'))
    prompt_case("null-prompt", wr("p.jsonl", '{"id": "a", "prompt": null}\n'))
    prompt_case("nonstring-response", wr("p.jsonl", '{"id": "a", "prompt": "hi", "response": ["a", "b"]}\n'))
    prompt_case("duplicate-ids", wr("p.jsonl", '{"id": "a", "prompt": "one"}\n{"id": "a", "prompt": "two"}\n'))
    prompt_case("parquet-no-prompt-column", parquet("p.parquet", {"id": ["a", "b"], "text": ["x", "y"]}))
    prompt_case("parquet-garbage", wr("p.parquet", b"PAR1" + binary + b"PAR1"))
    prompt_case("parquet-empty-table", parquet("p.parquet", {"prompt": pa_empty_strings()}))
    prompt_case("only-empty-prompt-all-but-first", wr("p.jsonl", '{"id": "e", "prompt": ""}\n'),
                "--positions", "all-but-first")
    prompt_case("response-positions-without-responses", lambda d: w.prompts, "--positions", "response")

    # ---- model paths (capture X -p GOOD -o NEW) ----------------------------------------------
    def model_case(name: str, make: Callable[[Path], Path], *extra: str, sentinel: bool = False):
        @add("model", name)
        def _(d: Path) -> Spec:
            out = d / "out.zarr"
            m = make(d)
            return Spec(w.cap(m, w.prompts, out, *extra), new_outputs=[out],
                        must_not_exist=[d / "REMOTE_CODE_RAN"] if sentinel else [],
                        protect=[m] if m.exists() else [])

    def model_copy(d: Path, drop: tuple[str, ...] = ()) -> Path:
        m = copy(w.model, d / "ckpt")
        for pat in drop:
            for f in m.glob(pat):
                f.unlink()
        return m

    def with_auto_map(d: Path) -> Path:
        m = model_copy(d)
        cfg = json.loads((m / "config.json").read_text())
        cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                           "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
        (m / "config.json").write_text(json.dumps(cfg, indent=2))
        code = (f"import pathlib\npathlib.Path({str(d / 'REMOTE_CODE_RAN')!r}).write_text('ran')\n"
                "from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilForCausalLM\n")
        (m / "modeling_evil.py").write_text(code)
        (m / "configuration_evil.py").write_text(code)
        return m

    def garbage_weights(d: Path) -> Path:
        m = model_copy(d)
        (m / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + binary)
        return m

    def garbage_config(d: Path) -> Path:
        m = model_copy(d)
        (m / "config.json").write_text("{ this is not json")
        return m

    def missing_model_type(d: Path) -> Path:
        m = model_copy(d)
        cfg = json.loads((m / "config.json").read_text())
        cfg.pop("model_type", None)
        cfg.pop("architectures", None)
        (m / "config.json").write_text(json.dumps(cfg))
        return m

    model_case("missing-folder", lambda d: d / "nowhere")
    model_case("unknown-hub-id-offline", lambda d: Path("no-such-org-xyz/no-such-model"))
    model_case("a-file", lambda d: a_file(d, "model.txt"))
    model_case("folder-without-config", lambda d: model_copy(d, ("config.json",)))
    model_case("empty-folder", lambda d: (d / "ckpt").mkdir() or d / "ckpt")
    model_case("config-without-weights", lambda d: model_copy(d, ("*.safetensors",)))
    model_case("pickle-only-without-allow-pickle", lambda d: copy(w.model_pickle, d / "ckpt"))
    model_case("auto-map-without-trust-remote-code", with_auto_map, sentinel=True)
    model_case("garbage-safetensors", garbage_weights)
    model_case("garbage-config-json", garbage_config)
    model_case("config-without-model-type", missing_model_type)
    model_case("no-tokenizer", lambda d: model_copy(d, ("tokenizer*", "special_tokens_map.json")))

    # ---- capture options (capture GOOD -p GOOD -o NEW OPTION) --------------------------------
    def option_case(name: str, *extra: str, prompts: Path | None = None):
        @add("options", name)
        def _(d: Path) -> Spec:
            out = d / "out.zarr"
            return Spec(w.cap(w.model, prompts or w.prompts, out, *extra), new_outputs=[out])

    long_prompts = {"max-length-beyond-context-long-prompt": w.long}
    for row in """
        layers-0,99                            --layers 0,99
        layers-abc                             --layers abc
        layers-5-2                             --layers 5-2
        layers-empty                           --layers ''
        positions-bogus                        --positions bogus
        positions-last:0                       --positions last:0
        batch-size-0                           --batch-size 0
        batch-size-negative                    --batch-size -3
        max-length-1                           --max-length 1
        max-length-beyond-context-long-prompt  --max-length 1000
        unit-tokens-0                          --unit-tokens 0
        dtype-int8                             --dtype int8
        resume-and-overwrite                   --resume --overwrite
        device-map-nonsense                    --device-map nonsense
        max-memory-garbage                     --max-memory lots
        service-unreachable                    --service base --address 127.0.0.1:1
    """.strip().splitlines():  # name, then the options as typed
        name, *extra = shlex.split(row)
        option_case(name, *extra, prompts=long_prompts.get(name))

    # ---- output locations -------------------------------------------------------------------
    def out_case(name: str, make_argv: Callable[[Path, Path], list[str]], make_target: Callable[[Path], Path]):
        @add("outputs", name)
        def _(d: Path) -> Spec:
            target = make_target(d)
            existing = target
            while not existing.exists():  # out inside a file: protect the file
                existing = existing.parent
            return Spec(make_argv(d, target), protect=[existing] if existing != d else [],
                        new_outputs=[] if target.exists() else [target])

    cap_to = lambda *extra: lambda d, t: w.cap(w.model, w.prompts, t, *extra)  # noqa: E731
    ana_to = lambda *extra: lambda d, t: w.ana(w.S, t, *extra)  # noqa: E731
    cmp_to = lambda *extra: lambda d, t: w.cmp([w.T, w.T1], t, *extra)  # noqa: E731
    rep_to = lambda *extra: lambda d, t: ["report", str(w.T), str(w.T1), "-c", str(w.C), "-o", str(t), *extra]  # noqa: E731

    def run_to(*extra):
        def make(d: Path, t: Path) -> list[str]:
            return ["run", str(w.write_run(d, out=str(t))), "--no-progress", *extra]
        return make

    inside_file = lambda d: a_file(d) / "sub"  # noqa: E731
    for verb, to in (("capture", cap_to), ("analyze", ana_to), ("compare", cmp_to), ("report", rep_to),
                     ("run", run_to)):
        out_case(f"{verb}-out-is-a-file", to(), a_file)
        out_case(f"{verb}-out-inside-a-file", to(), inside_file)
        out_case(f"{verb}-overwrite-user-folder", to("--overwrite"), user_folder)
    out_case("capture-into-user-folder", cap_to(), user_folder)
    out_case("capture-resume-into-user-folder", cap_to("--resume"), user_folder)
    out_case("capture-into-other-zarr", cap_to(), other_zarr)
    out_case("capture-overwrite-other-zarr", cap_to("--overwrite"), other_zarr)
    out_case("capture-resume-other-zarr", cap_to("--resume"), other_zarr)
    out_case("capture-overwrite-a-trace-folder", cap_to("--overwrite"), lambda d: copy(w.T, d / "T"))
    out_case("capture-existing-store-no-flag", cap_to(), lambda d: copy(w.S, d / "S.zarr"))
    out_case("capture-resume-other-model", lambda d, t: w.cap(w.model1, w.prompts, t, "--resume"),
             lambda d: copy(w.S, d / "S.zarr"))
    out_case("capture-resume-other-prompts", lambda d, t: w.cap(w.model, w.prompts_other, t, "--resume"),
             lambda d: copy(w.S, d / "S.zarr"))
    out_case("capture-resume-other-layers", cap_to("--resume", "--layers", "0,1"), lambda d: copy(w.S, d / "S.zarr"))
    out_case("capture-resume-other-dtype", cap_to("--resume", "--dtype", "bfloat16"),
             lambda d: copy(w.S, d / "S.zarr"))
    out_case("capture-resume-other-positions", cap_to("--resume", "--positions", "all"),
             lambda d: copy(w.S, d / "S.zarr"))
    out_case("analyze-existing-trace-no-flag", ana_to(), lambda d: copy(w.T, d / "T"))
    out_case("analyze-overwrite-a-comparison", ana_to("--overwrite"), lambda d: copy(w.C, d / "C"))
    out_case("analyze-overwrite-a-store", ana_to("--overwrite"), lambda d: copy(w.S, d / "S.zarr"))
    out_case("compare-existing-comparison-no-flag", cmp_to(), lambda d: copy(w.C, d / "C"))
    out_case("compare-overwrite-a-trace", cmp_to("--overwrite"), lambda d: copy(w.T, d / "T"))
    out_case("report-existing-report-no-flag", rep_to(), lambda d: copy(w.R, d / "R"))

    def report_with_user_file(d: Path) -> Path:
        r = copy(w.R, d / "R")
        (r / "my-notes.txt").write_text("mine\n")
        return r

    out_case("report-overwrite-report-holding-user-file", rep_to("--overwrite"), report_with_user_file)
    out_case("run-overwrite-other-zarr", run_to("--overwrite"), other_zarr)

    # ---- stores (inspect / verify / analyze STORE) ------------------------------------------
    def store_argv(verb: str, s: Path, d: Path) -> list[str]:
        if verb == "inspect":
            return ["inspect", str(s)]
        if verb == "verify":
            return ["verify", str(s), "--no-progress"]
        return w.ana(s, d / "trace")

    def store_case(name: str, make: Callable[[Path], Path], verbs=("inspect", "verify", "analyze")):
        for verb in verbs:
            def prep(d: Path, verb=verb) -> Spec:
                s = make(d)
                return Spec(store_argv(verb, s, d), protect=[s] if s.exists() else [],
                            new_outputs=[d / "trace"] if verb == "analyze" else [])
            C.append(Case("stores", f"{verb}-{name}", prep))

    def damaged(fn: Callable[[Path], None]):
        return modified(w.S, "S.zarr", fn)

    def creating(d: Path) -> Path:
        s = d / "creating.zarr"
        s.mkdir()
        (s / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
            "spinal": {"format_version": 1, "state": "creating"}}}))
        return s

    def drop_done_chunk(s: Path) -> None:
        chunks = sorted((s / "units" / "done" / "c").rglob("*"))
        chunks = [c for c in chunks if c.is_file()]
        chunks[len(chunks) // 2].unlink()

    store_case("missing", lambda d: d / "nowhere.zarr")
    store_case("empty-folder", lambda d: (d / "empty.zarr").mkdir() or d / "empty.zarr")
    store_case("not-a-store", user_folder)
    store_case("a-file", a_file, verbs=("inspect", "verify"))
    store_case("other-tools-zarr", other_zarr)
    store_case("root-zarr-json-deleted", damaged(lambda s: (s / "zarr.json").unlink()))
    store_case("root-zarr-json-truncated",
               damaged(lambda s: (s / "zarr.json").write_bytes((s / "zarr.json").read_bytes()[:40])))
    store_case("hidden-zarr-json-garbage", damaged(lambda s: (s / "hidden" / "zarr.json").write_bytes(binary[:300])))
    store_case("creation-interrupted", creating)
    store_case("incomplete-done-chunk-deleted", damaged(drop_done_chunk), verbs=("analyze",))

    # ---- analyze options (analyze COPY-OF-S -o NEW OPTION) ----------------------------------
    def analyze_case(name: str, *extra: str, store: Path | None = None, accepted: str | None = None):
        @add("analyze", name, accepted=accepted)
        def _(d: Path) -> Spec:
            s = copy(store or w.S, d / "S.zarr")
            return Spec(w.ana(s, d / "trace", *extra), protect=[s], new_outputs=[d / "trace"])

    accepted = {"blocks-1000": "docs/reliability.md 'Guarantees': more --blocks than sequences is not an error (each sequence is "
                               "its own block); said on stderr, recorded as blocks_used"}
    for row in """
        window-5:5000         --window 5:5000
        window-9:3            --window 9:3
        window-x              --window x
        window-0:4            --window 0:4
        blocks-0              --blocks 0
        blocks-1000           --blocks 1000
        n-boot-negative       --n-boot -1
        null-splits-negative  --null-splits -1
        layers-77             --layers 77
        layers-one-layer      --layers 2
        layers-abc            --layers abc
        lens-tokens-negative  --lens-tokens -5
        chunk-mib-0           --chunk-mib 0
        workers-negative      --workers -1
    """.strip().splitlines():  # name, then the options as typed
        name, *extra = shlex.split(row)
        analyze_case(name, *extra, accepted=accepted.get(name))
    analyze_case("one-prompt-store-default-blocks", store=w.S_one)

    # ---- traces, compare, report ------------------------------------------------------------
    def bad_trace(fn: Callable[[Path], None]):
        return modified(w.T, "T", fn)

    def set_format(t: Path) -> None:
        meta = json.loads((t / "trace.json").read_text())
        meta["trace_format"] = 99
        (t / "trace.json").write_text(json.dumps(meta))

    def v01_garbage_parquet(t: Path) -> None:  # a folder without digests (SPINAL 0.1 style), torn table
        (t / "spinal-output.json").unlink()
        (t / "trace.parquet").write_bytes(b"PAR1" + binary[:500])

    trace_makers: dict[str, Callable[[Path], Path]] = {
        "missing": lambda d: d / "nowhere",
        "a-file": a_file,
        "empty-folder": lambda d: (d / "empty").mkdir() or d / "empty",
        "a-store": lambda d: copy(w.S, d / "S.zarr"),
        "no-bootstrap-parquet": bad_trace(lambda t: (t / "bootstrap.parquet").unlink()),
        "no-sequences-parquet": bad_trace(lambda t: (t / "sequences.parquet").unlink()),
        "garbage-trace-parquet": bad_trace(lambda t: (t / "trace.parquet").write_bytes(binary[:700])),
        "garbage-trace-json": bad_trace(lambda t: (t / "trace.json").write_bytes(b"{\"trace_format\": 1, " + binary[:50])),
        "trace-format-99": bad_trace(set_format),
        "no-marker-garbage-trace-parquet": bad_trace(v01_garbage_parquet),
    }
    for tname, make in trace_makers.items():
        def prep(d: Path, make=make) -> Spec:
            t = make(d)
            return Spec(w.cmp([w.T, t], d / "cmp"), protect=[t] if t.exists() else [], new_outputs=[d / "cmp"])
        C.append(Case("traces", f"compare-trace-{tname}", prep))
    for tname in ("missing", "garbage-trace-json", "no-sequences-parquet"):
        def prep(d: Path, make=trace_makers[tname]) -> Spec:
            t = make(d)
            return Spec(["report", str(t), "-o", str(d / "rep")], protect=[t] if t.exists() else [],
                        new_outputs=[d / "rep"])
        C.append(Case("traces", f"report-trace-{tname}", prep))

    def compare_case(name: str, argv: Callable[[Path], list[str]]):
        @add("compare", name)
        def _(d: Path) -> Spec:
            return Spec(argv(d), protect=[w.T, w.T1, w.S, w.S1, w.S_one, w.model, w.model1], new_outputs=[d / "cmp"])

    compare_case("one-trace", lambda d: w.cmp([w.T], d / "cmp"))
    compare_case("same-trace-twice", lambda d: w.cmp([w.T, w.T], d / "cmp"))
    compare_case("n-boot-0", lambda d: ["compare", str(w.T), str(w.T1), "-o", str(d / "cmp"), "--n-boot", "0"])
    compare_case("weights-count-mismatch", lambda d: w.cmp([w.T, w.T1], d / "cmp", "--weights", w.model))
    compare_case("weights-swapped", lambda d: w.cmp([w.T, w.T1], d / "cmp", "--weights", w.model1,
                                                    "--weights", w.model))
    compare_case("weights-missing-folder", lambda d: w.cmp([w.T, w.T1], d / "cmp", "--weights", w.model,
                                                           "--weights", d / "nowhere"))
    compare_case("stores-of-another-prompt-set", lambda d: w.cmp([w.T, w.T1], d / "cmp", "--stores", w.S_one,
                                                                 "--stores", w.S1))
    compare_case("stores-count-mismatch", lambda d: w.cmp([w.T, w.T1], d / "cmp", "--stores", w.S))
    compare_case("stores-swapped", lambda d: w.cmp([w.T, w.T1], d / "cmp", "--stores", w.S1, "--stores", w.S))

    def report_case(name: str, argv: Callable[[Path], list[str]], extra_protect=()):
        @add("report", name)
        def _(d: Path) -> Spec:
            return Spec(argv(d), protect=[w.T, w.T1, *extra_protect], new_outputs=[d / "rep"])

    report_case("compare-of-other-traces", lambda d: ["report", str(w.T), str(w.T1), "-c", str(w.C_alt), "-o",
                                                      str(d / "rep")], (w.C_alt,))
    report_case("compare-missing-folder", lambda d: ["report", str(w.T), str(w.T1), "-c", str(d / "nowhere"), "-o",
                                                     str(d / "rep")])
    report_case("compare-is-a-trace", lambda d: ["report", str(w.T), str(w.T1), "-c", str(w.T1), "-o",
                                                 str(d / "rep")])

    @add("report", "compare-json-garbage")
    def _(d: Path) -> Spec:
        c = copy(w.C, d / "C")
        (c / "compare.json").write_bytes(b"{" + binary[:80])
        return Spec(["report", str(w.T), str(w.T1), "-c", str(c), "-o", str(d / "rep")], protect=[c, w.T, w.T1],
                    new_outputs=[d / "rep"])

    # ---- run configs ------------------------------------------------------------------------
    def run_case(name: str, make: Callable[[Path], Path], *extra: str):
        @add("run", name)
        def _(d: Path) -> Spec:
            f = make(d)
            return Spec(["run", str(f), "--no-progress", *extra], protect=[f] if f.exists() else [],
                        new_outputs=[d / "out"])

    def edit(fn: Callable[[str], str], **kw):
        def make(d: Path) -> Path:
            f = w.write_run(d, **kw)
            f.write_text(fn(f.read_text()))
            return f
        return make

    def toml_bytes(data: bytes):
        def make(d: Path) -> Path:
            f = d / "run.toml"
            f.write_bytes(data)
            return f
        return make

    run_case("missing", lambda d: d / "nowhere.toml")
    run_case("a-folder", lambda d: (d / "cfg").mkdir() or d / "cfg")
    run_case("binary", toml_bytes(binary))
    run_case("invalid-toml", toml_bytes(b'[run]\nout = "out\nprompts = \n[[checkpoints\n'))
    run_case("empty-file", toml_bytes(b""))
    run_case("unknown-table", edit(lambda t: t + "\n[capture2]\nx = 1\n"))
    run_case("unknown-key-capture", edit(lambda t: t.replace("unit_tokens = 256", "unit_tokens = 256\nbatchsize = 4")))
    run_case("unknown-key-run", edit(lambda t: t.replace('[run]\n', '[run]\nname = "x"\n')))
    run_case("unknown-key-compare", edit(lambda t: t.replace("n_boot = 50", "n_boot = 50\nbootstraps = 3")))
    run_case("unknown-key-cluster", edit(lambda t: t + "\n[cluster]\nreplicaz = 2\n"))
    run_case("wrong-type-capture", edit(lambda t: t.replace("unit_tokens = 256", 'unit_tokens = 256\nbatch_size = "four"')))
    run_case("wrong-type-analyze", edit(lambda t: t.replace("n_boot = 20", 'n_boot = "many"')))
    run_case("bad-value-analyze", edit(lambda t: t.replace("n_boot = 20", "n_boot = -1")))
    run_case("capture-sets-out", edit(lambda t: t.replace("unit_tokens = 256", 'unit_tokens = 256\nout = "x.zarr"')))
    run_case("run-without-prompts", edit(lambda t: re.sub(r'prompts = ".*"\n', "", t, count=1)))
    run_case("no-checkpoints", lambda d: w.write_run(d, ckpts=[]))
    run_case("duplicate-labels", lambda d: w.write_run(d, ckpts=[("a", str(w.model)), ("a", str(w.model1))]))
    run_case("bad-label-chars", lambda d: w.write_run(d, ckpts=[("my base", str(w.model)), ("t/1", str(w.model1))]))
    run_case("missing-checkpoint-path", lambda d: w.write_run(d, ckpts=[("a", str(w.model)), ("b", str(d / "nowhere"))]))
    run_case("checkpoint-is-a-file", lambda d: w.write_run(d, ckpts=[("a", str(w.model)), ("b", str(a_file(d)))]))
    run_case("prompts-missing", lambda d: w.write_run(d, prompts="nowhere.jsonl"))

    def binary_prompts_run(d: Path) -> Path:
        (d / "p.jsonl").write_bytes(binary)
        return w.write_run(d, prompts="p.jsonl")

    run_case("prompts-binary", binary_prompts_run)

    @add("run", "resume-and-overwrite-on-existing-run")
    def _(d: Path) -> Spec:  # a finished 1-checkpoint run of its own, then both flags at once
        f = w.write_run(d, ckpts=[("base", str(w.model))])
        res = run_cli(["run", str(f), "--no-progress"], d, 600)
        if res["rc"] != 0:
            raise RuntimeError(f"preparing the run failed (exit {res['rc']}): {res['stderr'][-400:]}")
        return Spec(["run", str(f), "--no-progress", "--resume", "--overwrite"], protect=[d / "out", f])
    run_case("unreachable-address", lambda d: w.write_run(d), "--address", "127.0.0.1:1")

    @add("run", "existing-run-folder-no-flag", serial=True)
    def _(d: Path) -> Spec:
        return Spec(["run", str(w.run_toml), "--no-progress"], protect=[w.run_dir])

    @add("run", "resume-after-prompt-content-changed", serial=True)
    def _(d: Path) -> Spec:
        p = w.run_dir / "prompts.jsonl"
        original = p.read_bytes()
        out = w.run_dir / "out"
        before = tree_hash(out)
        write_jsonl(p, good_rows(tag=" changed"))

        def restore() -> None:
            p.write_bytes(original)

        assert before != "absent", f"setup left no run folder at {out}"
        return Spec(["run", str(w.run_toml), "--no-progress", "--resume"], protect=[out, w.run_toml],
                    teardown=restore)

    # ---- plan -------------------------------------------------------------------------------
    def plan_case(name: str, argv: Callable[[Path], list[str]]):
        @add("plan", name)
        def _(d: Path) -> Spec:
            return Spec(["plan", *argv(d)])

    plan_case("unknown-preset", lambda d: ["llama-9-9000b"])
    plan_case("set-without-equals", lambda d: ["llama-3-8b", "--set", "mfu"])
    plan_case("set-mfu-abc", lambda d: ["llama-3-8b", "--set", "mfu=abc"])
    plan_case("set-unknown-key", lambda d: ["llama-3-8b", "--set", "warp_drive=1"])
    plan_case("nodes-0", lambda d: ["llama-3-8b", "--nodes", "0"])
    plan_case("gpus-per-node-0", lambda d: ["llama-3-8b", "--gpus-per-node", "0"])
    plan_case("gpu-memory-negative", lambda d: ["llama-3-8b", "--gpu-memory-gib", "-1"])
    plan_case("tokens-0", lambda d: ["llama-3-8b", "--tokens", "0"])
    plan_case("dtype-int8", lambda d: ["llama-3-8b", "--dtype", "int8"])
    plan_case("layers-abc", lambda d: ["llama-3-8b", "--layers", "abc"])
    plan_case("garbage-config-json", lambda d: [str(wr("config.json", binary[:200])(d))])
    plan_case("folder-without-config", lambda d: [str(user_folder(d))])

    # ---- usage errors caught by the option parser (typer/click) before SPINAL's code runs -----
    @add("usage", "unknown-option")
    def _(d: Path) -> Spec:
        return Spec(["inspect", str(w.S), "--frobnicate"], protect=[w.S])

    @add("usage", "non-integer-int-option")
    def _(d: Path) -> Spec:
        return Spec(w.cap(w.model, w.prompts, d / "out.zarr", "--batch-size", "abc"), new_outputs=[d / "out.zarr"])

    @add("usage", "missing-required-option")
    def _(d: Path) -> Spec:
        return Spec(["capture", str(w.model), "-p", str(w.prompts), "--no-progress"])

    return C


def pa_empty_strings():
    import pyarrow as pa

    return pa.array([], type=pa.string())


# -- the battery ----------------------------------------------------------------------------------

def run_case(case: Case, w: Work, timeout: float) -> dict:
    d = w.root / "cases" / case.key.replace("/", "__")
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    rec: dict = {"family": case.family, "name": case.name, "accepted_by_design": case.accepted}
    try:
        spec = case.prepare(d)
    except Exception as e:  # a bug of this battery, not of the CLI
        rec.update(status="setup-error", reasons=[f"case setup failed: {type(e).__name__}: {e}"], rc=None,
                   seconds=0.0, stderr_head=[], stdout_head=[], argv=[])
        return rec
    before = {str(p): (tree_hash(p), file_digests(p)) for p in spec.protect}
    new_before = {str(p): p.exists() for p in spec.new_outputs}
    try:
        res = run_cli(spec.argv, d, timeout)
    finally:
        if spec.teardown:
            spec.teardown()
    reasons = judge(res)
    changed = {}
    for p in spec.protect:
        h, digests = before[str(p)]
        if tree_hash(p) != h:
            changed[str(p)] = changed_files(p, digests)[:5] or ["(structure)"]
    for p, files in changed.items():
        reasons.append(f"bytes of {p.replace(str(w.root), '$W')} changed: {', '.join(files)}")
    for p in spec.must_not_exist:
        if p.exists():
            reasons.append(f"{p.name} exists: checkpoint code ran")
    notes = [f"left {str(p).replace(str(w.root), '$W')} behind" for p in spec.new_outputs
             if not new_before[str(p)] and p.exists() and not case.accepted]
    stderr = ANSI.sub("", res["stderr"])
    if case.accepted:
        status = ("accepted" if res["rc"] == 0 and not res["hung"] else
                  "refused-one-line" if not reasons else "accepted-case-failed")
    elif not reasons:
        status = "ok"
    else:
        status = "hang" if res["hung"] else "fail"
    rec.update(status=status, reasons=reasons, notes=notes, rc=res["rc"], hung=res["hung"], seconds=res["seconds"],
               argv=[a.replace(str(w.root), "$W") for a in spec.argv],
               stderr_head=[l.replace(str(w.root), "$W") for l in stderr.splitlines() if l.strip()][:6],
               stderr_tail=[l.replace(str(w.root), "$W") for l in stderr.splitlines() if l.strip()][-2:],
               stdout_head=[l.replace(str(w.root), "$W") for l in res["stdout"].splitlines() if l.strip()][:3])
    return rec


def print_report(results: list[dict], seconds: float) -> None:
    bad = [r for r in results if not r["accepted_by_design"]]
    ok = [r for r in bad if r["status"] == "ok"]
    failing = [r for r in bad if r["status"] != "ok"]
    print("\n" + "=" * 100)
    print(f"{'family':<10} {'tried':>6} {'one-line exit 2':>16} {'failing':>8} {'hangs':>6}")
    fams = sorted({r["family"] for r in bad}, key=[r["family"] for r in bad].index)
    for f in fams:
        rs = [r for r in bad if r["family"] == f]
        print(f"{f:<10} {len(rs):>6} {sum(r['status'] == 'ok' for r in rs):>16} "
              f"{sum(r['status'] != 'ok' for r in rs):>8} {sum(r['status'] == 'hang' for r in rs):>6}")
    print(f"{'TOTAL':<10} {len(bad):>6} {len(ok):>16} {len(failing):>8} "
          f"{sum(r['status'] == 'hang' for r in bad):>6}   ({seconds / 60:.1f} min)")
    if failing:
        print("\nfailing cases:")
        for r in failing:
            print(f"- {r['family']}/{r['name']}: {'; '.join(r['reasons'])}")
            print(f"    $ spinal {' '.join(r['argv'])}")
            for l in r["stderr_head"][:3]:
                print(f"    | {l[:300]}")
            if "Traceback" in " ".join(r["stderr_head"][:1]) and r.get("stderr_tail"):
                print(f"    | … {r['stderr_tail'][-1][:300]}")
    acc = [r for r in results if r["accepted_by_design"]]
    if acc:
        print("\naccepted by design (not counted):")
        for r in acc:
            print(f"- {r['family']}/{r['name']}: {r['status']} (exit {r['rc']}): {r['accepted_by_design']}")
    notes = [r for r in results if r.get("notes")]
    if notes:
        print("\nnotes (refused commands that left an output behind; not counted as failures):")
        for r in notes:
            print(f"- {r['family']}/{r['name']}: {'; '.join(r['notes'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", default=str(HERE / "results" / "bad-inputs.json"), help="where to write the results")
    ap.add_argument("--only", default=None, help="run only the cases whose 'family/name' contains this substring")
    ap.add_argument("--workdir", default=None, help="work folder (default: a temp folder, deleted unless --keep); "
                                                    "a given folder is kept and its setup reused")
    ap.add_argument("--keep", action="store_true", help="keep the temp work folder")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at once (default 1; the timings then overlap)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()

    own_tmp = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="spinal-bad-inputs-") if own_tmp else args.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    w = Work(root)
    all_cases = cases(w)
    names = [c.key for c in all_cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    assert not dup, f"duplicate case names: {dup}"
    chosen = [c for c in all_cases if args.only is None or args.only in c.key]
    if args.list:
        for c in chosen:
            print(c.key + (f"  [accepted by design: {c.accepted}]" if c.accepted else ""))
        print(f"{len(chosen)} case(s)")
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)
        return
    print(f"work folder: {root}; {len(chosen)} of {len(all_cases)} case(s); timeout {args.timeout:.0f} s per case",
          flush=True)
    t0 = time.perf_counter()
    results: list[dict] = []
    shared_changed: list[str] = []
    try:
        w.setup(args.timeout)
        shared_before = {p: tree_hash(p) for p in w.shared()}
        done: dict[str, dict] = {}

        def one(case: Case) -> None:
            rec = run_case(case, w, args.timeout)
            with lock:
                done[case.key] = rec
                tag = {"ok": "ok", "accepted": "accepted"}.get(rec["status"], rec["status"].upper())
                first = rec["stderr_head"][0][:140] if rec["stderr_head"] else ""
                why = "" if rec["status"] in ("ok", "accepted") else f" [{'; '.join(rec['reasons'])[:160]}]"
                print(f"[{len(done):>3}/{len(chosen)}] {case.key:<58} {tag:<8} exit {rec['rc']} "
                      f"{rec['seconds']:>5.1f} s{why}  {first}", flush=True)

        import threading
        from concurrent.futures import ThreadPoolExecutor

        lock = threading.Lock()
        try:
            if args.jobs > 1:
                with ThreadPoolExecutor(args.jobs) as pool:
                    list(pool.map(one, [c for c in chosen if not c.serial]))
                for c in chosen:
                    if c.serial:
                        one(c)
            else:
                for c in chosen:
                    one(c)
        finally:
            results.extend(done[c.key] for c in chosen if c.key in done)
            shared_changed = [str(p).replace(str(root), "$W") for p, h in shared_before.items() if tree_hash(p) != h]
    finally:
        seconds = time.perf_counter() - t0
        if results:
            print_report(results, seconds)
            if shared_changed:
                print(f"\nWARNING: the setup's shared artefacts changed during the battery: {', '.join(shared_changed)}")
            bad = [r for r in results if not r["accepted_by_design"]]
            doc = {
                "benchmark": "bad-inputs", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count()},
                "timeout_s": args.timeout, "only": args.only, "seconds": round(seconds, 1),
                "total": len(bad), "one_line_exit_2": sum(r["status"] == "ok" for r in bad),
                "failing": [f"{r['family']}/{r['name']}" for r in bad if r["status"] != "ok"],
                "hangs": [f"{r['family']}/{r['name']}" for r in bad if r["status"] == "hang"],
                "shared_artefacts_changed": shared_changed,
                "accepted_by_design": [{"case": f"{r['family']}/{r['name']}", "reason": r["accepted_by_design"],
                                        "status": r["status"]} for r in results if r["accepted_by_design"]],
                "cases": results,
            }
            out = Path(args.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
            print(f"\nresults: {out}")
        if own_tmp and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"work folder kept: {root}")


if __name__ == "__main__":
    main()
