"""The family's tokenizer, architecture and checkpoint format (bfloat16 safetensors + tokenizer + lineage record)."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"

# Renders exactly the plain training format "User: {request}\nAssistant: {reply}</s>", so
# apply_chat_template(..., add_generation_prompt=True) ends with "Assistant:" like data.format_prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('only user and assistant turns are supported') }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

LINEAGE_FILE = "spinal_reference.json"


@dataclass(frozen=True)
class Architecture:
    """A small Llama: RMSNorm, SwiGLU MLP, rotary positions, grouped-query attention, tied embeddings."""

    vocab_size: int = 3072  # byte-level BPE incl. 3 special tokens
    hidden_size: int = 96
    intermediate_size: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 4  # head_dim = 24
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = True  # as Llama-3.2-1B; keeps each checkpoint ~3 MB in bf16


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 pre-tokenization), BOS prepended by the post-processor."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   chat_template=CHAT_TEMPLATE, model_max_length=256)


def build_model(arch: Architecture, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    if len(tokenizer) > arch.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens; Architecture.vocab_size is {arch.vocab_size}")
    config = LlamaConfig(**asdict(arch), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5, initializer_range=0.02)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_checkpoint(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path, record: dict) -> None:
    """Write bf16 weights (model.safetensors), config, tokenizer and the lineage record into `path`.

    transformers 5 always writes safetensors (its save_pretrained has no safe_serialization
    switch any more), so we check the file instead of passing a flag that would be ignored.
    """
    if path.exists():
        shutil.rmtree(path)
    # bf16 storage halves the size; the caller continues from the bf16-rounded weights so the
    # lineage is exact (a DPO checkpoint starts from the very SFT weights that are shipped).
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    # transformers 5 records its new class name "TokenizersBackend", which 4.x's AutoTokenizer does
    # not know; "PreTrainedTokenizerFast" loads the same tokenizer.json in both (5 aliases it).
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
    weights = path / "model.safetensors"
    if not weights.exists():
        found = sorted(p.name for p in path.iterdir())
        raise RuntimeError(f"save_pretrained wrote no model.safetensors into {path}; it wrote {found}")
    record = record | {"weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "dtype": "bfloat16"}
    (path / LINEAGE_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def round_to_bf16(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """In place: the float32 model whose values are exactly the saved bfloat16 weights."""
    return model.to(torch.bfloat16).to(torch.float32)


def load_checkpoint(path: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict]:
    """Model upcast to float32 (exact: bf16 ⊂ fp32), tokenizer and lineage record, all from local files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    record = json.loads((path / LINEAGE_FILE).read_text(encoding="utf-8"))
    return model.eval(), tokenizer, record
