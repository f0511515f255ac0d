"""Shared pieces of the benchmarks: the ~50M-parameter Llama-style model, prompts, peak memory, machine facts."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from spinal.outputs import cpu_model

HERE = Path(__file__).parent


def llama_50m(path: Path, seed: int = 0) -> Path:
    """A random-weight Llama-style checkpoint of ~58M parameters (d=512, 8 blocks, vocab 32000)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (path / "config.json").exists():
        return path
    cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    _word_tokenizer().save_pretrained(path)
    return path


def gpt2_small(path: Path, seed: int = 0) -> Path:
    """A random-weight GPT-2-small-shaped checkpoint (124M: d=768, 12 blocks, LayerNorm, tied head, vocab 50257)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if (path / "config.json").exists():
        return path
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024,
                               bos_token_id=1, eos_token_id=2)).save_pretrained(path)
    _word_tokenizer().save_pretrained(path)
    return path


def char_tokenizer(bos: bool = True):
    """A character-level tokenizer over printable ASCII (ids 0–94; <s> 95, <unk> 96, </s> 97): the tests' own."""
    import sys

    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import make_tokenizer

    return make_tokenizer(bos)


def tiny_llama(seed: int = 0):
    """The tests' tiny random Llama (d = 64, 3 blocks, vocab 128) with non-trivial norm weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "llama", vocab_size=128, bos_token_id=95, eos_token_id=97, hidden_size=64, intermediate_size=128,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # non-trivial norm weights, so a wrong lens formula would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.to(torch.float32).eval()


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    tiny_llama(seed).save_pretrained(path)
    char_tokenizer(bos=True).save_pretrained(path)
    return path


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(32000)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="w1 $A", special_tokens=[("w1", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="w1", eos_token="w2", unk_token="w0")


def write_prompts(path: Path, n: int, length: int, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    with path.open("w") as f:
        for i in range(n):
            ids = torch.randint(3, 32000, (length - 1,), generator=g).tolist()
            f.write(json.dumps({"id": f"b{i}", "prompt": " ".join(f"w{j}" for j in ids)}) + "\n")
    return path


def run_child(code: str) -> tuple[str, str]:
    """Run ``code`` in a fresh Python; return the last line of its stdout and of its stderr."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    last = lambda s: (s.strip().splitlines() or [""])[-1]  # noqa: E731
    return last(r.stdout), last(r.stderr)


# The child's own peak RSS in MiB, printed last. Not ru_maxrss: Linux carries the parent's RSS at fork
# into the child's ru_maxrss across exec, so a child of a large benchmark process would report that.
PRINT_PEAK_RSS = ("print(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024)")


def child_peak_rss_mib(code: str) -> float:
    """Run ``code`` in a fresh Python that prints its own peak RSS (MiB) last; return that number."""
    return float(run_child(code)[0])


def best_of(fn, repeat: int = 3) -> float:
    """The shortest of ``repeat`` wall times of ``fn()``, in seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


def publish(res: dict, result_name: str, table: str, marker: str, update: bool) -> None:
    """Write ``results/<result_name>.json``, print the table, and refresh its block in docs/ if asked."""
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{result_name}.json").write_text(json.dumps(res, indent=2))
    print(table)
    if update:
        update_docs(marker, table)


def update_docs(name: str, table: str) -> None:
    """Replace the block between ``<!-- bench:NAME -->`` and its end marker in the one docs/ page that holds it
    (docs/benchmarks.md; bench:ci lives in docs/intervals.md)."""
    docs = Path(__file__).parent.parent / "docs"
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    pages = [p for p in sorted(docs.rglob("*.md")) if start in p.read_text()]
    if len(pages) != 1:
        raise SystemExit(f"{len(pages)} pages under docs/ hold the {start} marker; expected one")
    text = pages[0].read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    pages[0].write_text(f"{head}{start}\n{table}\n{end}{tail}")
