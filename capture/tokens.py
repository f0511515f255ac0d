"""Tokenize a prompt set once, up front, and choose the stored positions of each sequence (METHOD.md §1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinal.capture.prompts import PromptSet
from spinal.config import parse_positions
from spinal.errors import InputError


@dataclass(frozen=True)
class Tokenized:
    input_ids: tuple[tuple[int, ...], ...]  # per sequence, after truncation
    positions: tuple[tuple[int, ...], ...]  # stored positions per sequence
    input_length: np.ndarray  # (sequence,) tokens before truncation
    truncated: np.ndarray  # (sequence,) bool

    @property
    def stored_ids(self) -> list[list[int]]:
        return [[ids[p] for p in pos] for ids, pos in zip(self.input_ids, self.positions)]


def tokenize(prompts: PromptSet, tokenizer, *, max_length: int, chat_template: bool, positions: str) -> Tokenized:
    kind, k = parse_positions(positions)
    all_ids, all_pos, lengths, truncated = [], [], [], []
    for pr in prompts.prompts:
        head, tail = _split(pr.prompt, pr.response, tokenizer, chat_template)
        ids = head + tail
        if not ids:
            raise InputError(f"prompt {pr.id!r} tokenizes to nothing; remove it or fix the text")
        lengths.append(len(ids))
        truncated.append(len(ids) > max_length)
        ids = ids[:max_length]
        n = len(ids)
        if kind == "all":
            pos = list(range(n))
        elif kind == "all-but-first":
            pos = list(range(1, n))  # position 0 is the BOS / attention sink (METHOD.md §1)
        elif kind == "last":
            pos = list(range(max(0, n - k), n))
        else:  # response
            if pr.response is None:
                raise InputError(f"positions='response' but prompt {pr.id!r} has no \"response\" field")
            pos = list(range(min(len(head), n), n))
        if not pos:
            raise InputError(
                f"prompt {pr.id!r} has {n} token(s) after truncation to {max_length}; positions={positions!r} "
                "leaves nothing to store"
            )
        all_ids.append(tuple(int(i) for i in ids))
        all_pos.append(tuple(pos))
    return Tokenized(tuple(all_ids), tuple(all_pos), np.array(lengths, np.int32), np.array(truncated, bool))


def _split(prompt: str, response: str | None, tokenizer, chat_template: bool) -> tuple[list[int], list[int]]:
    """Token ids of the prompt part and of the response part (empty without a response)."""
    if chat_template:
        if getattr(tokenizer, "chat_template", None) is None:
            raise InputError("--chat-template was asked for, but the tokenizer has no chat template")
        user = [{"role": "user", "content": prompt}]
        head = _ids(tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True))
        if response is None:
            return head, []
        full = _ids(tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=True))
        if full[: len(head)] != head:  # template re-renders the prompt part: fall back to concatenation
            return head, list(tokenizer(response, add_special_tokens=False)["input_ids"])
        return head, full[len(head) :]
    head = list(tokenizer(prompt)["input_ids"])
    tail = list(tokenizer(response, add_special_tokens=False)["input_ids"]) if response else []
    return head, tail


def _ids(x) -> list[int]:
    if isinstance(x, dict) or hasattr(x, "keys"):
        x = x["input_ids"]
    return [int(i) for i in x]
