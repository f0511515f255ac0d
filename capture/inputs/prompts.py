"""Read a prompt set, from a file (JSONL, plain text, Parquet) or a dataset, into validated records with a hash."""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spinal.capture_config import PromptOptions
from spinal.errors import InputError, need, what_is_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    response: str | None = None
    conversation: tuple[tuple[str, str], ...] | None = None  # (role, content) turns of the prompt part, if a chat


@dataclass(frozen=True)
class PromptSet:
    path: str
    prompts: tuple[Prompt, ...]
    source: dict = field(default_factory=dict)  # layout, reply side, selection and, for a dataset, its identity

    @property
    def sha256(self) -> str:
        """Hash of the content (ids, prompts, replies, conversations), independent of the file format."""
        h = hashlib.sha256()
        for p in self.prompts:
            fields = [p.id, p.prompt, p.response] + ([[list(t) for t in p.conversation]] if p.conversation else [])
            h.update(json.dumps(fields, ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()

    @property
    def conversational(self) -> bool:
        """Some prompt is a conversation: it is rendered with the model's chat template."""
        return any(p.conversation for p in self.prompts)


def load_prompts(path: str, options: PromptOptions = PromptOptions()) -> PromptSet:
    """The prompt set at ``path``: a dataset (capture/inputs/datasets.py) or a file; its layout recognised or
    mapped (capture/inputs/layouts.py); a subset chosen by ``options.limit`` / ``options.sample``."""
    from spinal.capture.inputs import layouts
    from spinal.capture.inputs.datasets import is_dataset, load_rows

    mapping = layouts.Mapping(options.prompt_column, options.response_column, options.id_column, options.reply)
    if is_dataset(path):
        rows = load_rows(path, split=options.split, config=options.config, revision=options.revision)
        source, columns, n, take = dict(rows.source), rows.columns, len(rows), rows.take
        where = lambda i: f"{path} row {i}"  # noqa: E731
    else:
        source, columns, table = {"kind": "file", "where": str(path)}, *_file_rows(path)
        if columns is None:  # plain text: one prompt per line, nothing to map
            if any(v is not None for v in (mapping.prompt, mapping.response, mapping.id, mapping.reply)):
                raise InputError(f"{path} is plain text (one prompt per line): it has no columns to map; give a "
                                 ".jsonl, .parquet or dataset for --prompt-column/--reply")
            return _finish(path, [Prompt(str(i), t) for i, t in table], {**source, "layout": "text lines"}, options)
        n, where = len(table), (lambda i: f"{path}:{i}")  # noqa: E731
        take = lambda idx: [table[i] for i in idx]  # noqa: E731
    indices = _select(n, options, path)
    picked = take(indices)
    if not picked:
        raise InputError(f"{path} holds no prompts")
    layout = layouts.recognise(columns, picked[0][1], mapping)
    sides = layouts.sides(layout, mapping)
    if len(sides) != 1:
        raise InputError(f"reply={options.reply!r} makes two prompt sets; load each side (chosen, rejected) alone")
    side = sides[0]
    records = layouts.prompts(picked, layout, mapping, side, where)
    unused = sorted(set(columns) - layouts.used(layout, mapping, columns))
    source.update(layout=layout.name, reply=side, columns_unused=unused,
                  selection={"limit": options.limit, "sample": options.sample, "seed": options.seed,
                             "of": n} if options.limit or options.sample else None)
    return _finish(path, records, source, options)


def _finish(path: str, records: list[Prompt], source: dict, options: PromptOptions) -> PromptSet:
    if not records:
        raise InputError(f"prompt file {path} holds no prompts")
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.id in seen:
            raise InputError(f"{path}: prompt id {r.id!r} appears twice (records {seen[r.id] + 1} and {i + 1}); "
                             "name a unique column with --id-column")
        seen[r.id] = i
    pick = source.get("selection")
    log.info("prompts from %s: %s, %d prompt(s)%s%s%s", path, source["layout"], len(records),
             f", reply: {source['reply']}" if source.get("reply") else "",
             f", {'first' if options.limit else 'seeded sample of'} {len(records)} of {pick['of']} rows"
             if pick else "",
             f"; columns not used: {source['columns_unused']}" if source.get("columns_unused") else "")
    return PromptSet(str(path), tuple(records), source)


def _select(n: int, options: PromptOptions, path: str) -> list[int]:
    """Row positions to read: all, the first ``limit``, or a seeded ``sample`` (in the dataset's order); the options
    themselves are checked once, by PromptOptions."""
    if options.sample:
        if options.sample > n:
            raise InputError(f"sample={options.sample} but {path} holds {n} rows")
        return sorted(np.random.default_rng(options.seed).choice(n, options.sample, replace=False).tolist())
    return list(range(min(n, options.limit) if options.limit else n))


def _file_rows(path: str) -> tuple[list[str] | None, list[tuple[int, dict]] | list[tuple[int, str]]]:
    """(columns, [(line or row number, row)]) of a JSONL or Parquet file; (None, [(line number, text)]) of text."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as e:
        if what_is_at(path) == "nothing" or what_is_at(path).startswith(("a symlink loop", "a dangling")):
            need(path, "file", "prompt file")  # does not exist, or a loop or dangling link, said as such
        raise InputError(f"prompt file {path} cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"prompt file {path} is a folder without a dataset in it; give a .jsonl, .txt or .parquet "
                         "file, a save_to_disk folder or a folder of Parquet/Arrow/JSONL shards")
    if not stat.S_ISREG(mode):
        raise InputError(f"prompt file {path} is not a regular file (a pipe or device); give a file")
    try:
        if p.suffix == ".parquet":
            return _parquet(p)
        if p.suffix in (".jsonl", ".json"):
            return _jsonl(p)
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"prompt file {path} is not UTF-8 text (byte {e.start} cannot be decoded); give a "
                         ".jsonl, .txt or .parquet file") from None
    return None, [(i, line) for i, line in enumerate(lines, 1) if line.strip()]


def _jsonl(p: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    rows, columns = [], {}
    with p.open(encoding="utf-8-sig") as f:  # a byte-order mark is no error
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{p}:{lineno}: expected an object (one row per line), got {type(obj).__name__}")
            columns.update(dict.fromkeys(obj))
            rows.append((lineno, obj))
    return list(columns), rows


def _parquet(p: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:
        raise InputError(f"{p}: cannot read Parquet ({e})") from None
    return table.column_names, list(enumerate(table.to_pylist(), 1))
