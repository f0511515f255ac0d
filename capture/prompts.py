"""Read a prompt set (JSONL, plain text or Parquet) into validated records with a content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from spinal.errors import InputError


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    response: str | None = None


@dataclass(frozen=True)
class PromptSet:
    path: str
    prompts: tuple[Prompt, ...]

    @property
    def sha256(self) -> str:
        """Hash of the content (ids, prompts, responses), independent of the file format."""
        h = hashlib.sha256()
        for p in self.prompts:
            h.update(json.dumps([p.id, p.prompt, p.response], ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()


def load_prompts(path: str) -> PromptSet:
    p = Path(path)
    if not p.exists():
        raise InputError(f"prompt file {path} does not exist")
    if p.is_dir():
        raise InputError(f"prompt file {path} is a folder; give a .jsonl, .txt or .parquet file")
    try:
        if p.suffix == ".parquet":
            records = _parquet(p)
        elif p.suffix in (".jsonl", ".json"):
            records = _jsonl(p)
        else:
            records = _text(p)
    except UnicodeDecodeError as e:
        raise InputError(f"prompt file {path} is not UTF-8 text (byte {e.start} cannot be decoded); give a "
                         ".jsonl, .txt or .parquet file") from None
    if not records:
        raise InputError(f"prompt file {path} holds no prompts")
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.id in seen:
            raise InputError(f"{path}: prompt id {r.id!r} appears twice (records {seen[r.id] + 1} and {i + 1})")
        seen[r.id] = i
    return PromptSet(str(path), tuple(records))


def _jsonl(p: Path) -> list[Prompt]:
    out = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise InputError(f'{p}:{lineno}: expected an object with a string "prompt" field')
            resp = obj.get("response")
            if resp is not None and not isinstance(resp, str):
                raise InputError(f'{p}:{lineno}: "response" must be a string')
            out.append(Prompt(str(obj.get("id", f"{lineno}")), obj["prompt"], resp))
    return out


def _text(p: Path) -> list[Prompt]:
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return [Prompt(str(i), line) for i, line in enumerate(lines, 1) if line.strip()]


def _parquet(p: Path) -> list[Prompt]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:
        raise InputError(f"{p}: cannot read Parquet ({e})") from None
    cols = table.column_names
    if "prompt" not in cols:
        raise InputError(f"{p}: Parquet needs a 'prompt' column; found {cols}")
    rows = table.to_pylist()
    return [
        Prompt(str(r.get("id", i)), str(r["prompt"]), r.get("response") if "response" in cols else None)
        for i, r in enumerate(rows, 1)
    ]
