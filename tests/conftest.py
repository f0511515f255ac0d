"""Tiny random-weight checkpoints built from inline configs (nothing is downloaded), shared by the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 128
D = 64

# One inline config per architecture the capture must support (ISSUE 2); each is tiny but keeps
# the family's readout quirks: Gemma's √d embedding scale and 1 + w norm, Gemma-2's logit
# soft-cap, GPT-2's LayerNorm with bias and tied embeddings, NeoX's untied LayerNorm head.
ARCHS: dict[str, dict] = {
    "llama": dict(model_type="llama", hidden_size=D, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "mistral": dict(model_type="mistral", hidden_size=D, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, sliding_window=None),
    "qwen2": dict(model_type="qwen2", hidden_size=D, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "gemma": dict(model_type="gemma", hidden_size=D, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256),
    "gemma2": dict(model_type="gemma2", hidden_size=D, intermediate_size=128, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                   final_logit_softcapping=3.0, attn_logit_softcapping=50.0, sliding_window=16,
                   query_pre_attn_scalar=16),
    "gpt2": dict(model_type="gpt2", n_embd=D, n_layer=3, n_head=4, n_positions=256),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=D, intermediate_size=128, num_hidden_layers=3,
                     num_attention_heads=4, max_position_embeddings=256),
    "phi3": dict(model_type="phi3", hidden_size=D, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, pad_token_id=0),
}


def make_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII; with ``bos`` it prepends <s> like Llama's."""
    vocab = {chr(i): i - 32 for i in range(32, 127)}
    vocab.update({"<s>": 95, "<unk>": 96, "</s>": 97})
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    if bos:
        t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 95)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    from transformers import AutoConfig

    kw = dict(ARCHS[arch])
    model_type = kw.pop("model_type")
    cfg = AutoConfig.for_model(model_type, vocab_size=VOCAB, bos_token_id=95, eos_token_id=97, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # give norms non-trivial weights and biases so a wrong lens formula shows
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or "layernorm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype).eval()


def save_checkpoint(path: Path, arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, **save_kw) -> Path:
    model = build_model(arch, seed, dtype)
    model.save_pretrained(path, **save_kw)
    make_tokenizer(bos=arch not in ("gpt2", "gpt_neox")).save_pretrained(path)
    return path


PROMPTS = [
    {"id": "p1", "prompt": "How do I bake bread?", "response": " Mix flour, water and yeast."},
    {"id": "p2", "prompt": "Tell me a joke", "response": " Why did the chicken cross the road?"},
    {"id": "p3", "prompt": "What is 2+2?", "response": " Four."},
    {"id": "p4", "prompt": "Say hello politely to the new neighbours", "response": " Hello, welcome!"},
    {"id": "p5", "prompt": "x", "response": " y"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session", autouse=True)
def one_blas_thread():
    """The tests' matrices are small: one BLAS thread each, never a team spinning against the other process's
    threads on a shared 2-core machine (measured: 64×64 spectra 14× faster). Worker processes set their own."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpts")


@pytest.fixture(scope="session")
def checkpoint(ckpt_dir):
    """checkpoint(arch, seed=0, dtype=float32) -> a saved safetensors folder (built once per session)."""
    cache: dict = {}

    def get(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
        key = (arch, seed, dtype)
        if key not in cache:
            name = f"{arch}-{seed}-{str(dtype).split('.')[-1]}"
            cache[key] = save_checkpoint(ckpt_dir / name, arch, seed, dtype)
        return cache[key]

    return get


@pytest.fixture()
def llama(checkpoint) -> Path:
    """The tiny Llama checkpoint most capture tests use."""
    return checkpoint("llama")


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)


def assert_refused(result, *needles):
    """A CLI result that is bad input done right: exit 2, one line on stderr naming the problem, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in result.output


def store_arrays(path) -> dict:
    """Every array of a Zarr hierarchy by path, as numpy (to compare two stores value for value)."""
    import numpy as np
    import zarr

    out = {}

    def walk(grp, prefix=""):
        for name, a in grp.arrays():
            out[prefix + name] = np.asarray(a[...])
        for name, sub in grp.groups():
            walk(sub, prefix + name + "/")

    walk(zarr.open_group(str(path), mode="r"))
    return out


def tree(path) -> dict:
    """Every file under ``path`` (relative name -> bytes): "nothing was touched" is equality of two trees."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def real_model() -> Path:
    """The real pretrained GGUF (SmolLM2-135M-Instruct) tests capture: skipped where it is not fetched, a failure
    under CI (which fetches it, .ci/run)."""
    from reference.real_model import GGUF

    if not GGUF.exists():
        msg = f"the real model is not fetched ({GGUF}): run `.venv/bin/python -m reference.real_model`"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI fetches it: see .ci/run)")
        pytest.skip(msg)
    return GGUF


# -- stores in a bucket: a local S3-compatible server (moto's, as s3fs's own tests use) on 127.0.0.1 -------------

S3_BUCKET = "spinal-test"


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1 (a free port) with one bucket; its env vars (for ``s3``)."""
    import boto3
    import moto.server as moto_server  # dev dependencies (pip install -e '.[dev]'): missing ones fail, never skip
    import s3fs  # noqa: F401

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    client.create_bucket(Bucket=S3_BUCKET)
    try:
        yield env, client
    finally:
        server.stop()


class Bucket:
    """The test's own prefix in the local bucket: ``url(name)`` is ``s3://spinal-test/<test>/<name>``."""

    def __init__(self, env: dict, client, prefix: str):
        self.env, self.client, self.prefix = env, client, prefix

    def url(self, name: str) -> str:
        return f"s3://{S3_BUCKET}/{self.prefix}/{name}"

    def key(self, url: str) -> str:
        return url.removeprefix(f"s3://{S3_BUCKET}/")

    def objects(self, url: str) -> dict[str, bytes]:
        """Every object under a store URL (relative key -> bytes): the bucket's ``tree``."""
        base = self.key(url) + "/"
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=base):
            for o in page.get("Contents", []):
                out[o["Key"][len(base):]] = self.client.get_object(Bucket=S3_BUCKET, Key=o["Key"])["Body"].read()
        return out

    def exists(self, url: str) -> bool:
        return self.client.list_objects_v2(Bucket=S3_BUCKET, Prefix=self.key(url), MaxKeys=1)["KeyCount"] > 0

    def get(self, url: str) -> bytes:
        return self.client.get_object(Bucket=S3_BUCKET, Key=self.key(url))["Body"].read()

    def put(self, url: str, data: bytes) -> None:
        self.client.put_object(Bucket=S3_BUCKET, Key=self.key(url), Body=data)

    def download(self, url: str, dest: Path) -> Path:
        """A local copy of a store in the bucket, object for object."""
        for rel, data in self.objects(url).items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
        return dest


@pytest.fixture()
def bucket(s3_server, monkeypatch, request) -> Bucket:
    """The local S3 server's credentials and endpoint in this process's environment (and so in every subprocess
    the test starts), and a fresh prefix of the bucket for this test. (fsspec's cached S3 clients are kept: SPINAL
    reads remote stores without cached listings, and a dropped client's aiohttp session warns as unclosed.)"""
    env, client = s3_server
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Bucket(env, client, request.node.name.replace("[", "-").replace("]", ""))


# -- a capture whose writes are held back, for the one-writer and kill tests ---------------------------------------


def held_capture(hold: str) -> str:
    """A ``python -c`` script running the `spinal` command line with ``Store.write_unit`` held back by ``hold``
    (Python statements that see ``unit``, e.g. ``time.sleep(0.5)``): a slow disk or a stalled link."""
    body = "\n".join("    " + line for line in hold.splitlines())
    return (
        "import sys, time\n"
        "from spinal.store.contract import Store\n"
        "real = Store.write_unit\n"
        "def write_unit(self, unit, block, *pool):\n"
        f"{body}\n"
        "    return real(self, unit, block, *pool)\n"
        "Store.write_unit = write_unit\n"
        "from spinal.cli.app import app\n"
        "sys.argv = ['spinal'] + sys.argv[1:]\n"
        "app()\n"
    )


def wait_for(pred, timeout: float = 120, step: float = 0.02) -> bool:
    """Poll ``pred`` until it holds (True) or ``timeout`` seconds pass (False)."""
    import time

    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(step)
    return False


def assert_names_the_writer(r, pid: int) -> None:
    """A second writer's refusal: exit 2 and one line naming the first writer (pid, host, since when)."""
    import socket

    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"pid {pid}" in lines[0] and socket.gethostname() in lines[0] and "since" in lines[0]


def kill_group(proc) -> None:
    """SIGKILL a writer started with ``start_new_session=True`` (its whole process group), if still running."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
