"""Where a checkpoint's files are and what identifies them, without loading it: a Hub id resolved to its snapshot
folder in the local Hugging Face cache, with the commit (the cache first, then, unless HF_HUB_OFFLINE is set, the
Hub with a short timeout; every failure one line), and a cheap sampled hash of the weight files."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spinal.errors import InputError, ModelError, first_line

# org/name as the Hub spells it (letters, digits, '-', '_', '.'); a local path that exists is never one
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# One look-up of the repository on the Hub. Without it the client retries with backoff: a machine with no
# network printed 44 retry warnings over 88 s before its error.
TIMEOUT_S = 10.0
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# What a capture reads of a model repository: configs, tokenizer files, safetensors weights and the model's own
# code (refused unless trusted); not the other formats a repository may also hold (ONNX, Flax, GGUF, original/).
MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py")


@dataclass(frozen=True)
class Snapshot:
    """One revision of a Hub repository, on this machine."""

    repo: str  # org/name
    revision: str | None  # as asked: a branch, tag or commit (None: main)
    commit: str  # the 40-hex commit it resolved to
    folder: Path  # <cache>/<type>s--org--name/snapshots/<commit>

    def record(self) -> dict:
        """What a store records of it."""
        return {"repo": self.repo, "revision": self.revision, "commit": self.commit, "folder": str(self.folder)}


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is a Hub id (org/name) rather than a local path: it matches and no such path exists."""
    return bool(HUB_ID.fullmatch(name)) and not os.path.lexists(Path(name).expanduser())  # a symlink loop is a path


def cache_folder() -> str:
    """The Hugging Face hub cache in use (HF_HUB_CACHE, else HF_HOME/hub), read at call time."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def local_folder(name: str, revision: str | None = None, *, files: tuple[str, ...] | None = MODEL_FILES) -> str:
    """``name`` itself, or for a Hub id its snapshot folder at ``revision`` (see ``snapshot``)."""
    return str(snapshot(name, revision=revision, files=files).folder) if is_hub_id(name) else name


def snapshot(repo: str, *, revision: str | None = None, repo_type: str = "model",
             files: tuple[str, ...] | None = MODEL_FILES, allow_pickle: bool = False) -> Snapshot:
    """``repo`` at ``revision`` from the local cache; when it is not there and HF_HUB_OFFLINE is not set, fetched
    from the Hub (``files``: the patterns fetched, None: all; pickle weights only with ``allow_pickle``, and a
    model with nothing else is refused before anything is fetched). Every failure is one InputError naming the
    cache folder and the ``hf download`` command that fills it."""
    from huggingface_hub import constants, snapshot_download

    patterns = list(files) if files is not None else None
    try:
        folder = snapshot_download(repo, repo_type=repo_type, revision=revision, local_files_only=True,
                                   allow_patterns=patterns)
    except Exception:  # not cached, or cached incompletely: the Hub may fill it
        folder = None
    if folder is None:
        what = "the dataset" if repo_type == "dataset" else "the model"
        fetch = (f"fetch it where there is network with `hf download {repo}"
                 + (" --repo-type dataset" if repo_type == "dataset" else "")
                 + (f" --revision {revision}" if revision else "") + "` (the same HF_HOME), or give a local copy")
        if constants.HF_HUB_OFFLINE:
            raise InputError(f"{what} {repo} is not in the Hugging Face cache ({cache_folder()}) and "
                             f"HF_HUB_OFFLINE is set; {fetch}")
        folder = _fetch(repo, revision, repo_type, patterns, allow_pickle, what, fetch)
    return Snapshot(repo, revision, Path(folder).name, Path(folder))


def _fetch(repo: str, revision: str | None, repo_type: str, patterns: list[str] | None, allow_pickle: bool,
           what: str, fetch: str) -> str:
    """The snapshot downloaded: one look-up of the repository with a short timeout, then its files."""
    from huggingface_hub import HfApi, snapshot_download

    with _quiet():
        try:
            info = HfApi().repo_info(repo, repo_type=repo_type, revision=revision, timeout=TIMEOUT_S)
        except Exception as e:  # no network, no such repository or revision, gated, private: one line
            raise InputError(f"{what} {repo} is neither in the Hugging Face cache ({cache_folder()}) nor reachable "
                             f"({first_line(e, typed=True)}); {fetch}") from None
        if patterns is not None and repo_type == "model":
            patterns = patterns + _pickles_needed(repo, [s.rfilename for s in info.siblings or []], allow_pickle)
        try:
            return snapshot_download(repo, repo_type=repo_type, revision=revision, allow_patterns=patterns,
                                     etag_timeout=TIMEOUT_S)
        except Exception as e:
            raise InputError(f"{what} {repo} could not be downloaded into the Hugging Face cache ({cache_folder()}): "
                             f"{first_line(e, typed=True)}; {fetch}") from None


def _pickles_needed(repo: str, names: list[str], allow_pickle: bool) -> list[str]:
    """The pickle patterns to fetch: none where safetensors weights exist; where only pickles do, refused before
    they are fetched unless ``allow_pickle`` (then fetched: the folder check names them)."""
    if any(n.endswith(".safetensors") for n in names):
        return []
    pickles = [n for n in names if n.endswith(tuple(p[1:] for p in PICKLES))]
    if pickles and not allow_pickle:
        raise ModelError(f"{repo} has only pickle weights ({', '.join(pickles[:3])}); pickles can run code when "
                         "loaded: use a safetensors revision, or pass --allow-pickle if you trust the source")
    return list(PICKLES)


@contextmanager
def _quiet():
    """The hub client's own retry and progress warnings off: the failure is said once, by us."""
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub.setLevel(level)


def fingerprint(folder: Path | None) -> str | None:
    """A cheap content hash of the weights: each safetensors (or the GGUF file's) header, size and three 1 MiB
    samples."""
    if folder is None:
        return None
    h = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            for off in (0, max(0, size // 2 - (1 << 19)), max(0, size - (1 << 20))):
                fh.seek(off)
                h.update(fh.read(1 << 20))
    return "sha256-sampled:" + h.hexdigest()
