"""GPU capture throughput on a random-weight Llama-3-8B-shaped model in bf16: SPINAL capture vs the bare forward pass.

    python benchmarks/bench_capture_gpu.py                  # one GPU, < 8 minutes; writes results/capture-gpu.json
    python benchmarks/bench_capture_gpu.py --tiny --device cpu   # a smoke run of this script on a CPU

The model is built from Llama-3-8B's published shape with random weights (nothing is downloaded)
and saved once as safetensors so SPINAL loads it like a real checkpoint. Output format matches
`bench_capture.py` (same keys under "seconds" and "ratio_to_bare_forward").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_prompts  # noqa: E402

HERE = Path(__file__).parent
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=32000, max_position_embeddings=1024)


def build(path: Path, shape: dict, device: str) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    vocab = {f"w{i}": i for i in range(32000)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="w1 $A", special_tokens=[("w1", 1)])
    PreTrainedTokenizerFast(tokenizer_object=t, bos_token="w1", eos_token="w2", unk_token="w0").save_pretrained(path)
    del model
    return path


@torch.no_grad()
def against_hf(model, store_path: str, tokd, batch) -> dict:
    """The store's rows of the first batch's sequences against HF's own ``output_hidden_states`` of that batch
    (same sequences, same padding: the capture's first batch), every layer but the last (HF's is final-normed)."""
    from spinal.store.contract import Store, decode

    store = Store.open(store_path)
    offsets = store.sequences()["offset"]
    ids, mask = batch
    hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
    worst, exact = 0.0, True
    for r in range(ids.shape[0]):
        pos, off = list(tokd.positions[r]), int(offsets[r])
        for layer in range(len(hs) - 1):
            ref = hs[layer][r, pos].float().cpu().numpy()
            got = decode(store.hidden[store.layer_index(layer), off : off + len(pos)], store.dtype)
            exact &= bool(np.array_equal(got, ref))
            worst = max(worst, float(np.abs(got - ref).max()))
    return {"sequences": int(ids.shape[0]), "layers": len(hs) - 1, "bit_exact": exact, "max_abs_diff": worst}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tiny", action="store_true", help="a 4-block model, for checking the script itself")
    ap.add_argument("--workdir", default=None, help="where the model and store go (needs ~16 GB + the store)")
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spinal.capture import capture
    from spinal.capture.load import Loaded
    from spinal.capture.inputs.prompts import load_prompts
    from spinal.capture.tokens import tokenize
    from spinal.capture.units import batch_inputs
    from spinal.config import CaptureConfig

    work = Path(args.workdir or tempfile.mkdtemp(prefix="spinal-gpu-"))
    shape = TINY if args.tiny else LLAMA3_8B
    ckpt = work / ("tiny" if args.tiny else "llama3-8b-shape")
    if not (ckpt / "config.json").exists():
        build(ckpt, shape, args.device if args.device.startswith("cuda") else "cpu")
    prompts = write_prompts(work / "prompts.jsonl", args.prompts, args.length)
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16, device_map=args.device).eval()
    tokd = tokenize(load_prompts(str(prompts)), tok, max_length=4096, chat_template=False, positions="all-but-first")
    n = len(tokd.input_ids)
    batches = [batch_inputs(tokd, list(range(i, min(n, i + args.batch))), tok, torch.device(args.device))[:2]
               for i in range(0, n, args.batch)]
    stored = sum(len(p) for p in tokd.positions)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    @torch.no_grad()
    def forward(fn):
        sync()
        t = time.perf_counter()
        for ids, mask in batches:
            fn(input_ids=ids, attention_mask=mask, use_cache=False)
        sync()
        return time.perf_counter() - t

    forward(model)  # warm-up (kernels, allocator)
    bare, base = forward(model), forward(model.base_model)
    source = {"model": str(ckpt), "weights_fingerprint": "bench", "tokenizer": {"fingerprint": "bench"},
              "architecture": type(model).__name__}
    cfg = CaptureConfig(model=str(ckpt), prompts=str(prompts), out=str(work / "spinal.zarr"), batch_size=args.batch,
                        overwrite=True, device_map=args.device)
    t = time.perf_counter()
    capture(cfg, loaded=Loaded(model, tok, source))
    spinal_s = time.perf_counter() - t
    check = against_hf(model, cfg.out, tokd, batches[0])
    res = {
        "benchmark": "capture-gpu", "machine": {**machine(), "device": torch.cuda.get_device_name(0)
                                                if args.device.startswith("cuda") else "cpu"},
        "model_params": sum(p.numel() for p in model.parameters()), "layers_stored": shape["num_hidden_layers"] + 1,
        "prompts": args.prompts, "seq_len": args.length, "batch": args.batch, "stored_tokens": stored, "dtype": "bfloat16",
        "seconds": {"bare_forward": bare, "base_forward": base, "spinal_capture": spinal_s},
        "ratio_to_bare_forward": {"spinal_capture": bare / spinal_s, "base_forward": bare / base},
        "ratio_to_base_forward": {"spinal_capture": base / spinal_s},
        "store_vs_hf_output_hidden_states": check,
        "bytes_on_disk": {"spinal_capture": sum(f.stat().st_size for f in (work / "spinal.zarr" / "hidden").rglob("*")
                                                if f.is_file())},
    }
    (HERE / "results").mkdir(exist_ok=True)
    name = "capture-gpu-tiny.json" if args.tiny else "capture-gpu.json"
    (HERE / "results" / name).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
