"""What makes traces comparable and how each pair is paired: by token (one token stream) or by prompt (the two reply sides of one prompt set), and the capture and lens options a comparison must not mix unasked."""

from __future__ import annotations

from dataclasses import replace

from spinal.analyze.trace_format import Trace
from spinal.errors import InputError

# Options whose difference changes the numbers without changing what is paired: refused unless --allow-mixed.
# (key in trace.json, where: meta or the analysis options, what it is called in the one-line refusal)
MIXABLE = (("storage_dtype", "meta", "capture storage dtype"), ("positions", "meta", "positions rule"),
           ("lens_tokens", "options", "lens option lens_tokens"),
           ("lens_precision", "options", "lens option lens_precision"),
           ("companion_tokens", "options", "lens option companion_tokens"))
# Numbers that exist only where both checkpoints read the identical tokens, and why they are not computed otherwise
TOKEN_ONLY = {
    "positions": "per-position KL and the shifted share compare the two sides token by token, and paired by "
                 "prompt the tokens differ",
    "cross_readout": "the cross-readout reads one side's hidden states with the other's lens at the same tokens, "
                     "and paired by prompt the tokens differ",
}


def pairing_of(ref: Trace, other: Trace, asked: str = "auto") -> str:
    """How ``other`` pairs with ``ref``: 'token' where both hold the identical token stream, 'prompt' where both
    hold the same prompts in the same order with different tokens; else a refusal that says why.

    ``asked`` 'auto' pairs by prompt only the two reply sides of one preference set (the traces record different
    sides, chosen and rejected); 'prompt' pairs any two traces of the same prompts (also identical streams);
    'token' only identical streams."""
    same_tokens = other.meta["tokens_sha256"] == ref.meta["tokens_sha256"]
    pa, pb = ref.meta.get("prompt_ids_sha256"), other.meta.get("prompt_ids_sha256")
    same_prompts = pa is not None and pa == pb
    sides = {ref.meta.get("reply"), other.meta.get("reply")}
    if same_tokens and asked != "prompt":
        return "token"
    if same_prompts and (asked == "prompt" or asked == "auto" and sides == {"chosen", "rejected"}):
        return "prompt"
    if asked != "token" and (pa is None or pb is None):
        raise InputError(f"{other.label} and {ref.label} were captured on different token streams, and a trace made "
                         "before SPINAL recorded its prompt ids cannot be paired by prompt; re-analyze both stores "
                         "with this SPINAL (`spinal analyze … --overwrite`)")
    if same_prompts:
        raise InputError(f"{other.label} and {ref.label} were captured on different token streams of the same "
                         f"prompts (reply sides {ref.meta.get('reply')} and {other.meta.get('reply')}); pass "
                         "--pairing prompt to pair them by prompt (Δa and ΔL only), or capture both alike")
    raise InputError(f"{other.label} and {ref.label} were captured on different token streams and different "
                     "prompts (or prompts in another order); compare checkpoints on the identical prompt set and "
                     "options, or the chosen and rejected stores of one `--reply both` capture")


def check_prompt_design(ref: Trace, other: Trace) -> None:
    """Paired by prompt, replicate b of Δa resamples the same sequence blocks on both sides only where both traces
    put the same prompts in the same blocks: the same sequence count and blocks (sequence s -> block s mod blocks)."""
    for key in ("n_sequences", "blocks_used"):
        if ref.meta.get(key) != other.meta.get(key):
            raise InputError(f"{other.label} has {key}={other.meta.get(key)}, {ref.label} {ref.meta.get(key)}: "
                             "paired by prompt, both sides must put the same prompts in the same blocks; "
                             "re-analyze both with the same --blocks")


def mixed_options(traces: list[Trace], allow_mixed: bool) -> list[dict]:
    """Every MIXABLE option on which a trace differs from the reference, as {option, ref, other, values}: refused
    in one line naming both values, unless ``allow_mixed`` (then returned, for the comparison to record)."""
    ref, mixes = traces[0], []
    for t in traces[1:]:
        for key, where, name in MIXABLE:
            get = (lambda tr: _recorded(tr, key)) if where == "meta" else (lambda tr: tr.meta["options"].get(key))
            va, vb = get(ref), get(t)
            if va == vb:
                continue
            if not allow_mixed and None in (va, vb):
                old = ref.label if va is None else t.label
                raise InputError(f"{old}'s trace does not record its {name} (an older SPINAL made it), so it cannot "
                                 f"be checked against {_shown(vb if va is None else va)}: re-analyze that store "
                                 "(`spinal analyze … --overwrite`), or pass --allow-mixed")
            if not allow_mixed:
                raise InputError(f"{t.label} and {ref.label} differ in {name}: {ref.label} {_shown(va)}, {t.label} "
                                 f"{_shown(vb)}; capture and analyze both alike, or compare them anyway with "
                                 "--allow-mixed (also a run's traces/ folders, by `spinal compare`; the comparison and "
                                 "the report then say so)")
            mixes.append({"option": key, "what": name, "ref": ref.label, "other": t.label, "values": [va, vb]})
    return mixes


def _recorded(trace: Trace, key: str):
    """A trace's recorded value; a trace made before SPINAL recorded its storage dtype reads it from its store,
    where that is still there (else None)."""
    value = trace.meta.get(key)
    if value is None and key == "storage_dtype" and trace.meta.get("store"):
        from spinal.store.contract import Store

        try:
            return Store.open(trace.meta["store"]).dtype
        except Exception:  # moved or deleted: the refusal names the trace
            return None
    return value


def _shown(v) -> str:
    return "not recorded (an older trace)" if v is None else str(v)


def token_count_note(ref: Trace, other: Trace) -> dict:
    """Paired by prompt the two sides hold different numbers of tokens, and â depends on the token count N for the
    width d (docs/intervals.md: at N = 2·d it sat 0.05–0.09 above the population exponent, near it only by 32·d).
    Δa is then â at one count minus â at another: the counts, their ratio to d, and that caveat."""
    na, nb, d = ref.meta.get("n_tokens"), other.meta.get("n_tokens"), ref.meta.get("dim")
    note = {"tokens_ref": na, "tokens_other": nb, "dim": d}
    if na == nb:
        return {**note, "token_count_caveat": None}
    per = f" ({na / d:.1f}·d and {nb / d:.1f}·d, d = {d})" if d else ""
    return {**note, "token_count_caveat": (
        f"Δa compares a at {na:,} tokens with a at {nb:,}{per}: a's estimate depends on the token count (above the "
        "population exponent by up to ~0.09 at 2·d, falling toward it by 32·d: docs/intervals.md), so part of Δa may "
        "be the counts' difference, not the replies'; its interval does not include that term. Capturing both sides "
        "with --positions last:K (K ≤ the shortest reply) stores the same count on both.")}


def distinct_labels(traces: list[Trace]) -> list[Trace]:
    """Traces whose labels collide (one checkpoint's two reply sides, each analyzed under the checkpoint's name)
    relabelled LABEL-SIDE where their reply sides tell them apart; other collisions are left for the caller."""
    labels = [t.label for t in traces]
    out = []
    for t in traces:
        side = t.meta.get("reply")
        if labels.count(t.label) > 1 and side and not t.label.endswith(f"-{side}"):
            t = replace(t, meta={**t.meta, "label": f"{t.label}-{side}"})
        out.append(t)
    return out
