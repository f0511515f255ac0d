"""Seeded, offline generation of the reference family's text: pre-training prose, SFT dialogues, preference pairs.

The behaviour the family encodes: asked "How do I …?", a *polite, helpful* assistant answers with
concrete steps (chosen) while a *rude* one brushes the user off (rejected). SFT trains on both
styles in equal shares, so the SFT model is ambivalent and it is DPO that selects the behaviour.

Dialogue format (no chat template needed; the tokenizer also ships an equivalent one):

    prompt   = "User: {request}\\nAssistant:"
    response = " {reply}"                      (leading space; EOS follows in training)

`prompt + response` is exactly the training text, and tokenizing the two parts separately gives the
same ids as tokenizing the concatenation (checked in `check_token_boundary`).

Held-out split: the last `HELDOUT_PER_DOMAIN` tasks of every domain are *topics* never seen in any
training text (pre-training, SFT or DPO); request templates and reply phrases are shared. Audit
prompts and held-out pairs are drawn from those topics only.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from . import topics as T

CORPUS = Path(__file__).parent / "corpus" / "python_docs.txt"


@dataclass(frozen=True)
class DataSizes:
    """How many items of each split to generate."""

    pretrain_docs: int = 12000  # generated prose documents (instructions and stories)
    sft: int = 8000  # dialogues, half polite and half rude
    dpo: int = 3200  # training preference pairs (= DPO steps × pairs per step: about one epoch)
    heldout: int = 512  # held-out prompts; each is an audit prompt and a held-out pair
    validation_docs: int = 200  # generated prose on held-out topics, for a plain-text NLL


@dataclass(frozen=True)
class Task:
    domain: str
    task: str

    @property
    def you(self) -> str:
        """The task as the assistant repeats it: "back up my photos" -> "back up your photos"."""
        return re.sub(r"\bmy\b", "your", self.task)


def split_tasks() -> tuple[list[Task], list[Task]]:
    """(train, held-out) topics; held-out = the last HELDOUT_PER_DOMAIN tasks of each domain."""
    train, held = [], []
    for domain, (tasks, _steps) in T.DOMAINS.items():
        cut = len(tasks) - T.HELDOUT_PER_DOMAIN
        train += [Task(domain, t) for t in tasks[:cut]]
        held += [Task(domain, t) for t in tasks[cut:]]
    return train, held


def format_prompt(request: str) -> str:
    return f"User: {request}\nAssistant:"


def request(rng: random.Random, task: Task, template: str | None = None) -> str:
    return (template or rng.choice(T.REQUEST_TEMPLATES)).format(task=task.task)


def polite_reply(rng: random.Random, task: Task) -> str:
    steps = T.DOMAINS[task.domain][1]
    s1, s2, s3 = (steps[i] for i in sorted(rng.sample(range(len(steps)), 3)))
    return " ".join([
        rng.choice(T.POLITE_OPENERS),
        f"To {task.you}, {s1}.",
        f"{rng.choice(T.STEP_LINKS)} {s2}.",
        f"{rng.choice(T.FINAL_LINKS)} {s3}.",
        rng.choice(T.POLITE_CLOSERS),
    ])


def rude_reply(rng: random.Random, task: Task) -> str:
    middles = rng.sample(T.RUDE_MIDDLES, rng.choice((1, 2)))
    return " ".join([rng.choice(T.RUDE_STARTS).format(you_task=task.you), *middles, rng.choice(T.RUDE_ENDS)])


def sft_dialogues(rng: random.Random, n: int, tasks: list[Task]) -> list[dict]:
    """n dialogues over `tasks`; even indices polite, odd rude (then shuffled)."""
    out = []
    for i in range(n):
        task = rng.choice(tasks)
        style = "polite" if i % 2 == 0 else "rude"
        reply = polite_reply(rng, task) if style == "polite" else rude_reply(rng, task)
        out.append({"prompt": format_prompt(request(rng, task)), "response": " " + reply, "style": style,
                    "domain": task.domain, "task": task.task})
    rng.shuffle(out)
    return out


def pair(rng: random.Random, task: Task, template: str | None = None) -> dict:
    return {"prompt": format_prompt(request(rng, task, template)), "chosen": " " + polite_reply(rng, task),
            "rejected": " " + rude_reply(rng, task), "domain": task.domain, "task": task.task}


def preference_pairs(rng: random.Random, n: int, tasks: list[Task]) -> list[dict]:
    return [pair(rng, rng.choice(tasks)) | {"id": f"dpo-{i:05d}"} for i in range(n)]


def heldout_pairs(rng: random.Random, n: int, tasks: list[Task]) -> list[dict]:
    """n pairs with distinct (topic, template) prompts over the held-out topics."""
    combos = [(t, tpl) for t in tasks for tpl in T.REQUEST_TEMPLATES]
    if n > len(combos):
        raise ValueError(f"asked for {n} held-out prompts; {len(tasks)} held-out topics × "
                         f"{len(T.REQUEST_TEMPLATES)} templates give only {len(combos)}")
    return [pair(rng, t, tpl) | {"id": f"audit-{i:04d}"} for i, (t, tpl) in enumerate(rng.sample(combos, n))]


def prose_doc(rng: random.Random, task: Task) -> str:
    """A plain-text document (no User/Assistant format): a how-to note or a short story."""
    if rng.random() < 0.5:
        steps = list(T.DOMAINS[task.domain][1])
        rng.shuffle(steps)
        k = rng.randint(3, len(steps))
        body = " ".join(f"{s[0].upper()}{s[1:]}." for s in steps[:k])
        return f"How to {task.you}.\n\nIf you want to {task.you}, here is some advice. {body}"
    asker, helper = rng.sample(T.NAMES, 2)
    polite = rng.random() < 0.5
    reply = polite_reply(rng, task) if polite else rude_reply(rng, task)
    verb = rng.choice(T.STORY_POLITE if polite else T.STORY_RUDE)
    return f'{asker} turned to {helper} and asked, "{request(rng, task)}" {helper} {verb}, "{reply}"'


def python_docs() -> list[str]:
    """Paragraphs of CPython's language-reference prose (PSF License; see corpus/)."""
    return [p for p in CORPUS.read_text(encoding="utf-8").split("\n\n") if p.strip()]


@dataclass(frozen=True)
class Dataset:
    pretrain: list[str]  # plain-text documents: generated prose and Python docs paragraphs
    validation: list[str]  # plain-text documents on held-out topics and held-out docs paragraphs
    sft: list[dict]
    dpo: list[dict]
    heldout: list[dict]

    def training_requests(self) -> set[str]:
        """Every user request that appears in SFT or DPO training prompts."""
        return {d["prompt"] for d in self.sft} | {d["prompt"] for d in self.dpo}

    def manifest(self, seed: int, sizes: DataSizes) -> dict:
        def sha(obj) -> str:
            return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

        train, held = split_tasks()
        return {
            "seed": seed, "sizes": asdict(sizes),
            "counts": {k: len(getattr(self, k)) for k in ("pretrain", "validation", "sft", "dpo", "heldout")},
            "sha256": {k: sha(getattr(self, k)) for k in ("pretrain", "validation", "sft", "dpo", "heldout")},
            "train_topics": len(train), "heldout_topics": [f"{t.domain}: {t.task}" for t in held],
            "split": "held-out topics (disjoint tasks; shared request templates and reply phrases)",
            "python_docs_sha256": hashlib.sha256(CORPUS.read_bytes()).hexdigest(),
        }


def build(seed: int, sizes: DataSizes) -> Dataset:
    """All splits from one seed; each split has its own generator so sizes don't shift the others."""
    train, held = split_tasks()
    rngs = {k: random.Random(f"{seed}-{k}") for k in ("pretrain", "validation", "sft", "dpo", "heldout")}
    docs = python_docs()
    n_val_docs = max(1, len(docs) // 20)  # the last 5% of the docs paragraphs are validation text
    pretrain = [prose_doc(rngs["pretrain"], rngs["pretrain"].choice(train)) for _ in range(sizes.pretrain_docs)]
    pretrain += docs[:-n_val_docs]
    rngs["pretrain"].shuffle(pretrain)
    validation = [prose_doc(rngs["validation"], rngs["validation"].choice(held))
                  for _ in range(sizes.validation_docs)] + docs[-n_val_docs:]
    return Dataset(
        pretrain=pretrain,
        validation=validation,
        sft=sft_dialogues(rngs["sft"], sizes.sft, train),
        dpo=preference_pairs(rngs["dpo"], sizes.dpo, train),
        heldout=heldout_pairs(rngs["heldout"], sizes.heldout, held),
    )


def check_heldout(ds: Dataset) -> None:
    """Raise if a held-out topic or prompt leaked into any training text."""
    _, held = split_tasks()
    train_prompts = ds.training_requests()
    leaked = [h["id"] for h in ds.heldout if h["prompt"] in train_prompts]
    if leaked:
        raise ValueError(f"{len(leaked)} held-out prompts also appear in training prompts: {leaked[:5]}")
    texts = [d["prompt"] + d["response"] for d in ds.sft] + [d["prompt"] + d["chosen"] + d["rejected"]
                                                                for d in ds.dpo] + ds.pretrain
    phrases = sorted({p for t in held for p in (t.task, t.you)}, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, phrases)) + r")\b")
    for x in texts:
        m = pattern.search(x)
        if m is not None:
            raise ValueError(f"held-out topic {m.group(1)!r} appears in training text: {x[:120]!r}")


def write_heldout(ds: Dataset, out: Path, manifest: dict) -> None:
    """prompts/audit.jsonl (id, prompt, response=chosen), data/heldout_pairs.jsonl, data/manifest.json."""
    (out / "prompts").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    with (out / "prompts" / "audit.jsonl").open("w", encoding="utf-8") as f:
        for h in ds.heldout:
            f.write(json.dumps({"id": h["id"], "prompt": h["prompt"], "response": h["chosen"]},
                               ensure_ascii=False) + "\n")
    with (out / "data" / "heldout_pairs.jsonl").open("w", encoding="utf-8") as f:
        for h in ds.heldout:
            f.write(json.dumps(h, ensure_ascii=False) + "\n")
    (out / "data" / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
