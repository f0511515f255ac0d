"""What a capture reads and writes: one checkpoint × one prompt set (a file or a dataset) -> one store."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from spinal.dtypes import CAPTURED
from spinal.errors import InputError
from spinal.fields import option
from spinal.specs import parse_layers, parse_positions
from spinal.store.codecs import DEFAULT_CODEC, check_codec

DTYPES = ("auto", *CAPTURED)
REPLIES = ("chosen", "rejected", "both")


@dataclass(frozen=True)
class PromptOptions:
    """How rows become prompts: which split of a dataset, which columns, which reply side, which subset."""

    split: str | None = None
    config: str | None = None
    revision: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    id_column: str | None = None
    reply: str | None = None  # chosen | rejected (a preference dataset); "both" is two captures (CaptureConfig.sides)
    limit: int = 0
    sample: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        """The one check of the subset options, for a capture's and a prompt loader's alike."""
        for name in ("limit", "sample"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 0 (0: every row)")
        if self.limit and self.sample:
            raise InputError(f"limit={self.limit} and sample={self.sample}: give one of them")


@dataclass(frozen=True)
class CaptureConfig:
    """What to capture: one checkpoint × one prompt set -> one store."""

    RUN_SETS: ClassVar[frozenset] = frozenset({"model", "revision", "adapter", "prompts", "out", "resume",
                                               "overwrite"})

    model: str = option("local checkpoint folder (safetensors), a .gguf file, or a Hub model id (org/name, read "
                        "from its snapshot in the local Hugging Face cache, fetched there first when not offline)")
    prompts: str = option("prompts: a file (JSONL, plain text with one per line, Parquet), a datasets folder "
                          "(save_to_disk), a folder or glob of Parquet/Arrow/JSONL shards, or a Hub dataset id "
                          "(org/name, read from the local Hugging Face cache); the row layout is recognised "
                          "(TRL preference pairs, chat messages, Anthropic-HH, Alpaca, prompt/completion, "
                          "prompt[/response]) or mapped with --prompt-column", short="-p")
    out: str = option("output store path (local folder or fsspec URL)", short="-o")
    revision: str | None = option("Hub revision of a MODEL id: branch, tag or commit (default: main); the store "
                                  "records the commit it resolved to", None)
    adapter: str | None = option("a PEFT/LoRA adapter folder: merged into MODEL (its base) in memory before the "
                                 "self-checks; both identities are recorded", None)
    split: str | None = option("dataset split to read (default: the only one, else 'train')", None)
    dataset_config: str | None = option("dataset configuration (subset) name of a Hub dataset", None)
    dataset_revision: str | None = option("Hub dataset revision: branch, tag or commit (default: main)", None)
    prompt_column: str | None = option("column holding the prompt, for a layout SPINAL does not recognise", None)
    response_column: str | None = option("column holding the reply (with --prompt-column)", None)
    id_column: str | None = option("column holding each prompt's id (default: an 'id' column, else the row's "
                                   "index in the dataset, or its line number in a file)", None)
    reply: str | None = option("of a preference dataset: capture the prompt followed by the 'chosen' reply "
                               "(default), the 'rejected' one, or 'both' (two stores, OUT named by side: "
                               "NAME-chosen.zarr, NAME-rejected.zarr)", None)
    limit: int = option("read only the first N rows (0: all)", 0)
    sample: int = option("read a seeded random sample of N rows (0: all), in the dataset's order", 0)
    seed: int = option("seed of --sample", 0)
    layers: str = option("layers to store: 'all' or a list/ranges like '0,4,8-12' (0 = embedding output)", "all")
    positions: str = option(
        "token positions: 'auto' ('text' with --chat-template, else 'all-but-first'); 'text' (the user's and the "
        "reply's own tokens, no template tokens), 'user', 'reply'; 'all-but-first' (skip position 0, the attention "
        "sink), 'all', 'last:K', 'response' (every token after the prompt)", "auto")
    batch_size: int = option("sequences per forward pass", 8)
    max_length: int = option("tokens per sequence; longer inputs are truncated (and reported)", 512)
    dtype: str = option("compute dtype: auto (the checkpoint's on GPU, float32 on CPU, where bf16 matmuls run "
                        "~5× slower), float32, bfloat16, float16", "auto")
    device_map: str | None = option("accelerate device_map: 'auto', 'cpu', 'cuda:0', … (default: cpu or one GPU)",
                                    None)
    max_memory: str | None = option("accelerate max_memory, e.g. '0=70GiB,1=70GiB,cpu=200GiB'", None)
    chat_template: bool = option("wrap prompts with the tokenizer's chat template", False)
    unit_tokens: int = option("stored tokens per work unit (a unit owns whole shards)", 8192)
    codec: str = option("lossless codec of the stored activations, always checksummed (crc32c): zstd-1, zstd-3, "
                        "blosc-zstd-1-shuffle, blosc-lz4-shuffle, blosc-lz4-bitshuffle, or crc32c (no compression); "
                        "docs/benchmarks.md 'Store writes' measures them. A resumed store keeps its own", DEFAULT_CODEC)
    write_threads: int = option("threads that compress and checksum a unit's shards while the next unit runs (0: "
                                "one per core this process may use); as many more, mostly asleep, write them", 0)
    direct_io: bool = option("write shard files with O_DIRECT, past the page cache, where the file system takes it "
                             "(same bytes; --no-direct-io writes through the page cache; docs/benchmarks.md 'Store writes')", True)
    resume: bool = option("finish an interrupted store: redo exactly the units not marked done", False)
    overwrite: bool = option("replace an existing store at --out", False)
    trust_remote_code: bool = option("allow the checkpoint's own Python code (off: refused)", False)
    allow_pickle: bool = option("allow pickle (.bin/.pt) weights (off: safetensors only)", False)
    allow_offload: bool = option("allow a device map that spills to CPU or disk on a GPU replica", False)
    self_check: bool = option("compare captured states and lens logits with the model's own on a probe batch "
                              "before capturing (--no-self-check skips it: not advised)", True)

    def __post_init__(self) -> None:
        for name in ("batch_size", "unit_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 1")
        if self.write_threads < 0:
            raise InputError(f"write_threads={self.write_threads}; must be ≥ 0 (0: one per core)")
        if self.max_length < 2:
            raise InputError(f"max_length={self.max_length}; must be ≥ 2")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype={self.dtype!r}; choose one of {', '.join(DTYPES)}")
        parse_positions(self.positions)
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite contradict each other: choose one")
        parse_layers(self.layers, None)
        check_codec(self.codec)
        self.prompt_options()  # limit and sample, checked where the prompt loader checks them (PromptOptions)
        if self.reply not in (None, *REPLIES):
            raise InputError(f"reply={self.reply!r}; choose one of {', '.join(REPLIES)}")

    @property
    def stored_positions(self) -> str:
        """The rule ``auto`` stands for: a chat template's own tokens are identical in every prompt, so with one
        only the text is stored (their rows would be shared by every sequence: a shelf in the spectrum)."""
        if self.positions != "auto":
            return self.positions
        return "text" if self.chat_template else "all-but-first"


    def prompt_options(self) -> PromptOptions:
        """How the prompt set is read: split, columns, reply side and subset (the store records them)."""
        return PromptOptions(self.split, self.dataset_config, self.dataset_revision, self.prompt_column,
                             self.response_column, self.id_column, self.reply, self.limit, self.sample, self.seed)

    def sides(self) -> list["CaptureConfig"]:
        """One capture per reply side: itself, or with reply='both' a chosen and a rejected one, each writing
        to OUT named by its side (``a.zarr`` -> ``a-chosen.zarr``, ``a-rejected.zarr``)."""
        if self.reply != "both":
            return [self]
        return [replace(self, reply=side, out=side_path(self.out, side)) for side in ("chosen", "rejected")]


def side_path(out: str, side: str) -> str:
    """``out`` with the reply side before its suffix: ``runs/base.zarr`` -> ``runs/base-chosen.zarr``."""
    head, sep, name = out.rstrip("/").rpartition("/")
    stem, dot, suffix = name.partition(".")
    return f"{head}{sep}{stem}-{side}{dot}{suffix}"
