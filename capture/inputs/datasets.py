"""Rows from where researchers keep them: a `datasets` folder (save_to_disk), a folder or glob of Parquet, Arrow
or JSONL shards, or a Hub dataset id resolved through the local Hugging Face cache (offline when cached)."""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from spinal.errors import InputError
from spinal.checkpoint import snapshot

log = logging.getLogger(__name__)

SHARD_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json"}


@dataclass(frozen=True)
class Rows:
    """A dataset split as rows, and what it came from (recorded in the store's provenance)."""

    source: dict  # kind, where, split, config, revision (the resolved commit for a Hub id), fingerprint, rows
    columns: list[str]
    table: object  # a datasets.Dataset

    def __len__(self) -> int:
        return len(self.table)

    def take(self, indices: list[int]) -> list[tuple[int, dict]]:
        """(index in the split, row) for ``indices``, in their order."""
        return list(zip(indices, self.table.select(indices).to_list())) if indices else []


def is_dataset(path: str) -> bool:
    """Whether ``path`` names a dataset rather than one prompt file: a folder, a glob, or a Hub id (org/name
    that is not a local path)."""
    if any(ch in path for ch in "*?[") or Path(path).is_dir():
        return True
    return _looks_like_hub_id(path) and not os.path.lexists(path)  # a broken symlink is a path, not an id


def load_rows(path: str, *, split: str | None = None, config: str | None = None,
              revision: str | None = None) -> Rows:
    """The rows of one split of the dataset at ``path`` (see ``is_dataset``). Every failure is one InputError."""
    import datasets

    p = Path(path)
    commit = None
    try:
        if p.is_dir() and (p / "dataset_dict.json").exists():  # save_to_disk of several splits: load only one
            names = json.loads((p / "dataset_dict.json").read_text())["splits"]
            split = _choose(names, split, path)
            kind, table = "save_to_disk", _disk_split(p / split, path, split)
        elif p.is_dir() and (p / "state.json").exists():
            kind, found = "save_to_disk", _disk_split(p, path, split)
            table, split = found, str(found.split or split or "train")
        else:
            if p.is_dir() or any(ch in path for ch in "*?["):
                kind, found = "data files", _data_files(path, config)
            else:
                snap = snapshot(path, revision=revision, repo_type="dataset", files=None)
                commit, kind = snap.commit, "hub"
                found = datasets.load_dataset(str(snap.folder), name=config)
            split = _choose(list(found), split, path)
            table = found[split]
    except InputError:
        raise
    except Exception as e:  # datasets raises many kinds (FileNotFoundError, ValueError, its own): one line each
        raise InputError(f"cannot read the dataset {path}: {_first_line(e)}") from None
    if len(table) == 0:
        raise InputError(f"the dataset {path} split {split!r} holds no rows; choose another with --split")
    source = {"kind": kind, "where": str(path), "split": split, "config": config, "revision": commit,
              "fingerprint": getattr(table, "_fingerprint", None), "rows": len(table)}
    return Rows(source, list(table.column_names), table)


def _disk_split(folder: Path, path: str, split: str | None):
    """One save_to_disk split; an empty one is refused from its state file (datasets cannot load it)."""
    import datasets

    state = json.loads((folder / "state.json").read_text())
    if not state.get("_data_files"):
        raise InputError(f"the dataset {path} split {split or folder.name!r} holds no rows; choose another with "
                         "--split")
    return datasets.load_from_disk(str(folder))


def _data_files(path: str, config: str | None):
    """A folder of shards (split names read from the file names, as `datasets` does) or a glob of one kind."""
    import datasets

    if Path(path).is_dir():
        return datasets.load_dataset(path, name=config)
    files = sorted(glob.glob(path, recursive=True))
    if not files:
        raise InputError(f"no file matches {path}")
    kinds = {SHARD_SUFFIXES.get(Path(f).suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise InputError(f"{path} matches {len(files)} file(s) of kinds {sorted(Path(f).suffix for f in files)[:5]}; "
                         f"give shards of one kind ({', '.join(SHARD_SUFFIXES)})")
    return datasets.load_dataset(kinds.pop(), data_files=files)


def _choose(names: list[str], split: str | None, path: str) -> str:
    """The split named, else the only one, else 'train' (said in the log)."""
    if split is None:
        if len(names) == 1:
            return names[0]
        if "train" in names:
            log.info("%s has splits %s: reading 'train' (choose with --split)", path, names)
            return "train"
        raise InputError(f"{path} has splits {names}; choose one with --split")
    if split not in names:
        raise InputError(f"{path} has no split {split!r}; its splits: {names}")
    return split


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "/", "~")) and "\\" not in path


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

