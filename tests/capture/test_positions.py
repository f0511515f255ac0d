"""Positions that see the chat template: 'text', 'user' and 'reply' store the texts' own tokens, never the
template's; 'auto' picks 'text' under a chat template; rows shared across sequences are counted and warned of."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_tokenizer, write_jsonl
from spinal.capture.inputs.prompts import Prompt, PromptSet
from spinal.capture.tokens import shared_row_share, tokenize
from spinal.cli.app import app
from spinal.config import CaptureConfig

TEMPLATE = ("{{ bos_token }}<system>Be kind and brief.</system>{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
PROMPTS = PromptSet("mem", (Prompt("a", "Hello there", "Hi!"), Prompt("b", "Why now", "Fine.")))


@pytest.fixture()
def chat_tokenizer():
    tok = make_tokenizer(bos=True)
    tok.chat_template = TEMPLATE
    return tok


def _chars(tok, text: str) -> list[int]:
    return [tok.convert_tokens_to_ids(c) for c in text]  # the character-level tokenizer: one id per character


@pytest.mark.parametrize("chat", [True, False])
def test_text_user_and_reply_are_the_texts_own_tokens(chat_tokenizer, chat):
    tok = chat_tokenizer
    for rule, want in (("user", lambda p: p.prompt), ("reply", lambda p: p.response),
                       ("text", lambda p: p.prompt + p.response)):
        t = tokenize(PROMPTS, tok, max_length=200, chat_template=chat, positions=rule)
        assert t.stored_ids == [_chars(tok, want(p)) for p in PROMPTS.prompts], rule
    everything = tokenize(PROMPTS, tok, max_length=200, chat_template=chat, positions="all")
    if chat:  # the template's system prompt and tags are in the sequence, only never stored by the text rules
        head = _chars(tok, "<system>Be kind and brief.</system><user>")
        assert list(everything.input_ids[0][1 : 1 + len(head)]) == head


def test_auto_is_text_under_a_chat_template_and_all_but_first_without():
    base = dict(model="m", prompts="p", out="o")
    assert CaptureConfig(**base).stored_positions == "all-but-first"
    assert CaptureConfig(**base, chat_template=True).stored_positions == "text"
    assert CaptureConfig(**base, chat_template=True, positions="all").stored_positions == "all"


def test_shared_rows_are_those_whose_whole_prefix_another_sequence_has():
    assert shared_row_share([(1, 2, 3), (1, 2, 3)], [(0, 1, 2), (0, 1, 2)]) == 1.0
    assert shared_row_share([(1, 2, 3), (1, 2, 4)], [(1, 2), (1, 2)]) == 0.5  # position 1 shared, 2 not
    assert shared_row_share([(1, 2), (2, 2)], [(0, 1), (0, 1)]) == 0.0  # same token, other prefix: not shared


def test_shared_row_share_equals_a_brute_force_count_on_random_overlapping_sequences():
    rng = np.random.default_rng(0)
    for trial in range(30):
        stem = tuple(int(t) for t in rng.integers(0, 3, 6))  # shared template-like heads, tiny vocab: many ties
        ids = [stem[: rng.integers(0, 7)] + tuple(int(t) for t in rng.integers(0, 3, rng.integers(1, 8)))
               for _ in range(rng.integers(1, 12))]
        positions = [tuple(sorted(rng.choice(len(x), rng.integers(0, len(x) + 1), replace=False))) for x in ids]
        shared = sum(any(j != i and len(ids[j]) > p and ids[j][: p + 1] == ids[i][: p + 1] for j in range(len(ids)))
                     for i, pos in enumerate(positions) for p in pos)
        total = sum(len(p) for p in positions)
        assert shared_row_share(ids, positions) == (shared / total if total else 0.0), (trial, ids, positions)


def test_a_template_heavy_capture_is_warned_of_and_text_is_not(chat_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="spinal.capture.tokens"):
        t = tokenize(PROMPTS, chat_tokenizer, max_length=200, chat_template=True, positions="all-but-first")
    assert t.shared_rows > 0.2 and "repeat another sequence's exactly" in caplog.text
    assert "positions='text'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spinal.capture.tokens"):
        t = tokenize(PROMPTS, chat_tokenizer, max_length=200, chat_template=True, positions="text")
    assert t.shared_rows == 0.0 and caplog.text == ""


def test_capture_with_a_chat_template_stores_the_text_by_default(checkpoint, tmp_path, chat_tokenizer):
    ck = tmp_path / "chat-llama"
    shutil.copytree(checkpoint("llama"), ck)
    chat_tokenizer.save_pretrained(ck)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": p.id, "prompt": p.prompt} for p in PROMPTS.prompts])
    out = tmp_path / "s.zarr"
    r = CliRunner().invoke(app, ["capture", str(ck), "-p", str(prompts), "-o", str(out), "--chat-template",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    from spinal.store.contract import Store

    s = Store.open(str(out))
    assert s.meta["positions"] == "text"
    t = s.tokens()
    stored = [list(t["ids"][t["sequence"] == i]) for i in range(2)]
    assert stored == [_chars(chat_tokenizer, p.prompt) for p in PROMPTS.prompts]


def test_a_conversation_is_rendered_whole_and_its_reply_positions_are_the_replys_own(chat_tokenizer):
    """A chat row (system and earlier turns) renders with the template as one conversation; positions 'reply'
    store exactly the reply's characters, 'user' every turn's own text and never a tag; without the template such
    a row is refused, not flattened."""
    conv = (("system", "Rules."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Joke?"))
    ps = PromptSet("mem", (Prompt("c", "Joke?", "No.", conv),))
    tok = chat_tokenizer
    allpos = tokenize(ps, tok, max_length=400, chat_template=True, positions="all")
    rendered = tok.apply_chat_template([{"role": r, "content": c} for r, c in conv] +
                                       [{"role": "assistant", "content": "No."}], tokenize=False)
    assert "".join(tok.convert_ids_to_tokens(list(allpos.input_ids[0]))[1:]) == rendered.removeprefix(tok.bos_token)
    reply = tokenize(ps, tok, max_length=400, chat_template=True, positions="reply")
    assert reply.stored_ids == [_chars(tok, "No.")]
    user = tokenize(ps, tok, max_length=400, chat_template=True, positions="user")
    assert user.stored_ids == [_chars(tok, "Rules.HiHelloJoke?")]
    from spinal.errors import InputError
    with pytest.raises(InputError, match="is a conversation: it needs the chat template"):
        tokenize(ps, tok, max_length=400, chat_template=False, positions="all")
