"""Tokenize a prompt set once, up front, and choose the stored positions of each sequence (docs/method.md §1)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spinal.capture.inputs.prompts import PromptSet
from spinal.specs import parse_positions
from spinal.errors import InputError

log = logging.getLogger(__name__)

# Warn when more than this share of the stored rows repeat another sequence's row exactly: a causal model
# gives identical states for an identical token prefix, so such rows (a system prompt, a chat template's
# header) are one point counted many times, a shelf in the spectrum rather than data. Measured on
# SmolLM2-135M-Instruct with its chat template and 8 short questions: 67 % with 'all-but-first', 11 % with
# 'text' (the same first word after the same header, e.g. "How", "What", is the same state too).
SHARED_ROWS_WARN = 0.20


@dataclass(frozen=True)
class Tokenized:
    input_ids: tuple[tuple[int, ...], ...]  # per sequence, after truncation
    positions: tuple[tuple[int, ...], ...]  # stored positions per sequence
    input_length: np.ndarray  # (sequence,) tokens before truncation
    truncated: np.ndarray  # (sequence,) bool
    shared_rows: float = 0.0  # share of stored rows whose whole token prefix another sequence also has

    @property
    def stored_ids(self) -> list[list[int]]:
        return [[ids[p] for p in pos] for ids, pos in zip(self.input_ids, self.positions)]


@dataclass(frozen=True)
class _Split:
    head: list[int]  # the prompt part's ids (with any template tokens)
    tail: list[int]  # the response part's ids
    text: list[bool]  # per token of head + tail: one of the user's or the reply's own characters


def tokenize(prompts: PromptSet, tokenizer, *, max_length: int, chat_template: bool, positions: str) -> Tokenized:
    kind, k = parse_positions(positions)
    if kind == "auto":
        raise ValueError("resolve positions='auto' first (CaptureConfig.stored_positions)")
    all_ids, all_pos, lengths, truncated = [], [], [], []
    for pr in prompts.prompts:
        if pr.conversation and not chat_template:
            raise InputError(f"prompt {pr.id!r} is a conversation: it needs the chat template (--chat-template)")
        sp = _split(pr.prompt, pr.response, tokenizer, chat_template, need_text=kind in ("text", "user", "reply"),
                    conversation=pr.conversation)
        ids = sp.head + sp.tail
        if not ids:
            raise InputError(f"prompt {pr.id!r} tokenizes to nothing; remove it or fix the text")
        lengths.append(len(ids))
        truncated.append(len(ids) > max_length)
        ids = ids[:max_length]
        if kind == "response" and pr.response is None:
            raise InputError(f"positions='response' but prompt {pr.id!r} has no \"response\" field")
        pos = _positions(kind, k, len(ids), len(sp.head), sp.text)
        if not pos:
            raise InputError(
                f"prompt {pr.id!r} has {len(ids)} token(s) after truncation to {max_length}; positions={positions!r} "
                "leaves nothing to store"
            )
        all_ids.append(tuple(int(i) for i in ids))
        all_pos.append(tuple(pos))
    shared = shared_row_share(all_ids, all_pos)
    if shared > SHARED_ROWS_WARN:
        advice = ("" if kind in ("text", "user", "reply") else
                  "; positions='text' stores only the prompts' and replies' own tokens")
        log.warning("%.0f%% of the stored rows repeat another sequence's exactly (the same token prefix, e.g. a "
                    "chat template or system prompt): the spectrum weighs each as one point counted many times%s",
                    100 * shared, advice)
    return Tokenized(tuple(all_ids), tuple(all_pos), np.array(lengths, np.int32), np.array(truncated, bool), shared)


def _positions(kind: str, k: int, n: int, n_head: int, text: list[bool]) -> list[int]:
    """Stored positions of one sequence of n tokens (after truncation) whose prompt part has n_head tokens."""
    if kind == "all":
        return list(range(n))
    if kind == "all-but-first":
        return list(range(1, n))  # position 0 is the BOS / attention sink (docs/method.md §1)
    if kind == "last":
        return list(range(max(0, n - k), n))
    if kind == "response":
        return list(range(min(n_head, n), n))
    lo, hi = {"text": (0, n), "user": (0, min(n_head, n)), "reply": (min(n_head, n), n)}[kind]
    return [p for p in range(lo, hi) if text[p]]


def shared_row_share(ids: list[tuple[int, ...]], positions: list[tuple[int, ...]]) -> float:
    """The share of stored rows (sequence, position) whose token prefix ids[:position + 1] is also another
    sequence's: their hidden states are identical in a causal model.

    Exact, by sorting: in lexicographic order the sequences sharing a prefix with one sequence lie next to it, so
    its longest prefix shared with any other is the longer of its common prefixes with its two neighbours, and a
    row is shared iff its position lies below that length.
    """
    n = len(ids)
    total = sum(len(p) for p in positions)
    if not total:
        return 0.0
    order = sorted(range(n), key=lambda i: ids[i])
    arrays = [np.asarray(x, dtype=np.int64) for x in ids]
    shared_len = np.zeros(n, dtype=np.int64)  # per sequence: its longest prefix that another sequence has too
    for a, b in zip(order, order[1:]):
        x, y = arrays[a], arrays[b]
        m = min(x.size, y.size)
        differ = np.flatnonzero(x[:m] != y[:m])
        lcp = int(differ[0]) if differ.size else m
        shared_len[a] = max(shared_len[a], lcp)
        shared_len[b] = max(shared_len[b], lcp)
    return sum(int((np.asarray(p, dtype=np.int64) < shared_len[s]).sum()) for s, p in enumerate(positions)) / total


def _split(prompt: str, response: str | None, tokenizer, chat_template: bool, need_text: bool,
           conversation: tuple[tuple[str, str], ...] | None = None) -> _Split:
    """Token ids of the prompt part and of the response part, and which tokens are the texts' own. A
    ``conversation`` (the prompt as chat turns) is rendered whole; otherwise the prompt is one user turn."""
    if chat_template:
        if getattr(tokenizer, "chat_template", None) is None:
            raise InputError("--chat-template was asked for, but the tokenizer has no chat template")
        user = ([{"role": r, "content": c} for r, c in conversation] if conversation else
                [{"role": "user", "content": prompt}])
        contents = [c for _, c in conversation] if conversation else [prompt]
        head = _ids(tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True))
        msgs = user if response is None else user + [{"role": "assistant", "content": response}]
        if response is None:
            tail = []
        else:
            full = _ids(tokenizer.apply_chat_template(msgs, tokenize=True))
            if full[: len(head)] != head:  # template re-renders the prompt part: fall back to concatenation
                tail = list(tokenizer(response, add_special_tokens=False)["input_ids"])
                msgs = None  # the rendering no longer matches the ids: texts found part by part below
            else:
                tail = full[len(head):]
        text = _template_text(tokenizer, msgs, head + tail, contents, response) if need_text and msgs else None
        if need_text and text is None:
            raise InputError("positions 'text'/'user'/'reply' need the chat template's text to re-tokenize to its "
                             "ids (this tokenizer's does not); use positions='response' or 'all-but-first'")
        return _Split(head, tail, text or [])
    head = list(tokenizer(prompt)["input_ids"])
    tail = list(tokenizer(response, add_special_tokens=False)["input_ids"]) if response else []
    text = _plain_text(tokenizer, prompt, head) + [True] * len(tail) if need_text else []
    return _Split(head, tail, text)


def _template_text(tokenizer, msgs: list[dict], ids: list[int], contents: list[str], response: str | None
                   ) -> list[bool] | None:
    """Which tokens of the rendered chat fall inside the user's or the reply's characters: the template is
    rendered as text, re-tokenized with offsets, and the contents are found in it (no per-model token list).
    None when the text does not re-tokenize to the template's own ids."""
    rendered = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=response is None)
    enc = _offsets(tokenizer, rendered)
    if enc is None or enc[0] != ids:
        return None
    spans, start = [], 0
    for content in contents + ([response] if response is not None else []):
        c = content.strip()
        at = rendered.find(c, start)
        if at < 0:
            return None
        spans.append((at, at + len(c)))
        start = at + len(c)
    return [b > a and any(lo <= a and b <= hi for lo, hi in spans) for a, b in enc[1]]


def _plain_text(tokenizer, prompt: str, head: list[int]) -> list[bool]:
    """The prompt's own tokens when it was tokenized alone: everything but special tokens (BOS/EOS)."""
    enc = _offsets(tokenizer, prompt, special=True)
    if enc is None or enc[0] != head:
        special = set(getattr(tokenizer, "all_special_ids", []))
        return [i not in special for i in head]
    return [b > a for a, b in enc[1]]


def _offsets(tokenizer, text: str, special: bool = False) -> tuple[list[int], list[tuple[int, int]]] | None:
    """(ids, character spans) of ``text``; None for a tokenizer without offsets (a slow one)."""
    try:
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    return [int(i) for i in enc["input_ids"]], [tuple(o) for o in enc["offset_mapping"]]


def _ids(x) -> list[int]:
    if isinstance(x, dict) or hasattr(x, "keys"):
        x = x["input_ids"]
    return [int(i) for i in x]
