"""Dataset rows as prompts: recognise the field's layouts (TRL preference pairs, chat messages, Anthropic-HH,
Alpaca, prompt/completion) from the columns, or map columns as the user says, and choose the reply side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from spinal.capture.inputs.prompts import Prompt
from spinal.errors import InputError

REPLIES = ("chosen", "rejected", "both")
HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
MAP_FLAGS = "--prompt-column (and --response-column, --id-column)"


@dataclass(frozen=True)
class Mapping:
    """What the user said about the columns (all optional): the prompt, the reply and the id column, and which
    reply of a preference pair to capture."""

    prompt: str | None = None
    response: str | None = None
    id: str | None = None
    reply: str | None = None  # chosen | rejected | both (preference layouts only)


@dataclass(frozen=True)
class Layout:
    """A recognised layout: its name (said in the log and recorded), whether it holds preference pairs, and the
    function turning (row, reply side) into a Prompt's fields (prompt text, reply text, conversation)."""

    name: str
    preference: bool
    fields: Callable[[dict, str | None], tuple[str, str | None, tuple | None]]
    reads: tuple[str, ...] = ()  # the columns it reads (besides the id)


def recognise(columns: Iterable[str], first: dict, mapping: Mapping) -> Layout:
    """The layout of rows with these ``columns`` (``first`` a sample row, for the value types); a user's
    ``mapping.prompt`` overrides recognition. An unknown layout is one line naming the columns and the flags."""
    cols = set(columns)
    if mapping.prompt is not None:
        missing = [c for c in (mapping.prompt, mapping.response) if c is not None and c not in cols]
        if missing:
            raise InputError(f"column(s) {missing} not in the dataset; its columns: {sorted(cols)}")
        return Layout(f"columns {mapping.prompt!r}" + (f" + {mapping.response!r}" if mapping.response else ""),
                      False, _columns(mapping.prompt, mapping.response), (mapping.prompt, mapping.response or ""))
    if mapping.response is not None:
        raise InputError(f"--response-column {mapping.response!r} needs --prompt-column too")
    if {"chosen", "rejected"} <= cols:
        if "prompt" in cols:
            conv = _is_conversation(first["prompt"])
            return Layout(f"TRL preference ({'conversational' if conv else 'standard'})", True, _explicit(conv),
                          ("prompt", "chosen", "rejected"))
        if isinstance(first["chosen"], str) and HH_ASSISTANT in first["chosen"]:
            return Layout("Anthropic-HH (Human/Assistant turns)", True, _hh, ("chosen", "rejected"))
        conv = _is_conversation(first["chosen"])
        return Layout(f"TRL preference, implicit prompt ({'conversational' if conv else 'standard'})", True,
                      _implicit(conv), ("chosen", "rejected"))
    if "messages" in cols:
        return Layout("chat messages", False, _messages, ("messages",))
    if {"prompt", "completion"} <= cols:
        conv = _is_conversation(first["prompt"])
        return Layout(f"TRL prompt-completion ({'conversational' if conv else 'standard'})", False, _completion(conv),
                      ("prompt", "completion"))
    if {"instruction", "output"} <= cols:
        return Layout("Alpaca (instruction/input/output)", False, _alpaca, ("instruction", "input", "output"))
    if "prompt" in cols:
        return Layout("prompt" + (" + response" if "response" in cols else ""), False,
                      _columns("prompt", "response" if "response" in cols else None), ("prompt", "response"))
    if "text" in cols:
        return Layout("text", False, _columns("text", None), ("text",))
    raise InputError(f"no known layout in columns {sorted(cols)} (known: TRL prompt/chosen/rejected, messages, "
                     f"Anthropic-HH chosen/rejected, instruction/input/output, prompt[/response], text); map them "
                     f"with {MAP_FLAGS}")


def prompts(rows: Iterable[tuple[int, dict]], layout: Layout, mapping: Mapping, side: str | None,
            where: Callable[[int], str] = lambda i: f"row {i}") -> list[Prompt]:
    """One Prompt per (row index, row): the reply is ``side`` of a preference pair (None elsewhere). The id is
    the ``mapping.id`` column, else an ``id`` column, else the row's index in the dataset (stable under
    --limit and --sample)."""
    out = []
    for index, row in rows:
        try:
            prompt, reply, conversation = layout.fields(row, side)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"{where(index)}: not a {layout.name} row ({_reason(e)}); fix the row or map the "
                             f"columns with {MAP_FLAGS}") from None
        out.append(Prompt(_row_id(row, index, mapping), prompt, reply, conversation))
    return out


def used(layout: Layout, mapping: Mapping, columns: Iterable[str]) -> set[str]:
    """The columns a layout reads, the id column included: the rest are named in the log, never silently dropped."""
    return {c for c in (*layout.reads, mapping.id or "id") if c in set(columns)}


def sides(layout: Layout, mapping: Mapping) -> list[str | None]:
    """The reply sides to capture: [None] for a layout without pairs; chosen, rejected or both for pairs
    (chosen unless told)."""
    if not layout.preference:
        if mapping.reply is not None:
            raise InputError(f"--reply {mapping.reply} needs preference pairs (chosen/rejected columns); this dataset "
                             f"is {layout.name}")
        return [None]
    reply = mapping.reply or "chosen"
    if reply not in REPLIES:
        raise InputError(f"--reply {reply!r}; choose one of {', '.join(REPLIES)}")
    return ["chosen", "rejected"] if reply == "both" else [reply]


def _row_id(row: dict, index: int, mapping: Mapping) -> str:
    key = mapping.id or ("id" if "id" in row else None)
    if key is None:
        return str(index)
    if key not in row:
        raise InputError(f"--id-column {key!r} is not a column; the columns: {sorted(row)}")
    return str(row[key])


def _reason(e: Exception) -> str:
    return f"missing field {e}" if isinstance(e, KeyError) else str(e)


def _is_conversation(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in x)


def _turns(x: Any, what: str) -> tuple[tuple[str, str], ...]:
    """A conversation as ((role, content), …), checked: a list of {role, content} with string values."""
    if not isinstance(x, list) or not x:
        raise ValueError(f"{what} is not a non-empty list of {{role, content}} messages")
    for m in x:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{what} holds {m!r}, not a {{role, content}} message with string values")
    return tuple((m["role"], m["content"]) for m in x)


def _text(x: Any, what: str) -> str:
    if not isinstance(x, str):
        raise ValueError(f"{what} is {type(x).__name__}, not text")
    return x


def _last_user(turns: tuple[tuple[str, str], ...]) -> str:
    """The prompt's own text for the prompt column: its last user turn (the whole conversation is rendered)."""
    return next((c for r, c in reversed(turns) if r == "user"), turns[-1][1])


def _reply(x: Any, conversational: bool, what: str) -> str:
    """A reply column's text: a string, or (conversational) the assistant message(s) after the prompt."""
    if not conversational:
        return _text(x, what)
    turns = _turns(x, what)
    if turns[-1][0] != "assistant":
        raise ValueError(f"{what} does not end with an assistant message")
    return turns[-1][1]


def _columns(prompt: str, response: str | None):
    def fields(row, side):
        reply = None if response is None or row[response] is None else _text(row[response], repr(response))
        return _text(row[prompt], repr(prompt)), reply, None
    return fields


def _explicit(conversational: bool):
    """TRL's explicit-prompt preference rows: prompt + chosen + rejected (replies only)."""
    def fields(row, side):
        reply = _reply(row[side], conversational, side)
        if not conversational:
            return _text(row["prompt"], "prompt"), reply, None
        turns = _turns(row["prompt"], "prompt")
        return _last_user(turns), reply, turns
    return fields


def _implicit(conversational: bool):
    """TRL's implicit-prompt rows: chosen and rejected are whole conversations (or texts) sharing the prompt;
    the prompt is their longest common prefix of whole turns (or characters), as TRL's extract_prompt does."""
    def fields(row, side):
        if conversational:
            a, b = _turns(row["chosen"], "chosen"), _turns(row["rejected"], "rejected")
            n = 0
            while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
                n += 1
            turns, reply = (a if side == "chosen" else b)[:n], (a if side == "chosen" else b)[n:]
            if not turns or [r for r, _ in reply] != ["assistant"]:
                raise ValueError("chosen and rejected do not share a prompt followed by one assistant reply")
            return _last_user(turns), reply[0][1], turns
        a, b = _text(row["chosen"], "chosen"), _text(row["rejected"], "rejected")
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        if n == 0:
            raise ValueError("chosen and rejected share no prompt")
        return a[:n], (a if side == "chosen" else b)[n:], None
    return fields


def _hh(row, side):
    """Anthropic-HH: the dialogue up to and including the last "\\n\\nAssistant:" is the prompt, the rest the
    reply (the split of TRL's and the original paper's preprocessing)."""
    text = _text(row[side], side)
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0 or HH_HUMAN not in text[:cut]:
        raise ValueError(f"{side} has no Human turn followed by an Assistant turn")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:].lstrip(" "), None


def _messages(row, side):
    """Chat rows: the conversation up to the last assistant message is the prompt, that message the reply (none
    when the conversation ends with the user)."""
    turns = _turns(row["messages"], "messages")
    if turns[-1][0] == "assistant" and len(turns) > 1:
        return _last_user(turns[:-1]), turns[-1][1], turns[:-1]
    return _last_user(turns), None, turns


def _completion(conversational: bool):
    def fields(row, side):
        reply = _reply(row["completion"], conversational, "completion")
        if not conversational:
            return _text(row["prompt"], "prompt"), reply, None
        turns = _turns(row["prompt"], "prompt")
        return _last_user(turns), reply, turns
    return fields


def _alpaca(row, side):
    """Alpaca rows: the instruction, then the input (when there is one) after a blank line; the output is the reply."""
    instruction, extra = _text(row["instruction"], "instruction"), row.get("input") or ""
    prompt = instruction + ("\n\n" + _text(extra, "input") if extra else "")
    return prompt, _text(row["output"], "output"), None
