"""The block-list rule: a model's decoder blocks are the shallowest container numbering num_hidden_layers children.

One rule, read from two sources: a model's modules (capture/discover.py, the planner's meta models) and a
checkpoint's tensor names (the per-block parameter change), so both count the same blocks.
"""

from __future__ import annotations

from typing import Iterable


def pick(containers: Iterable[tuple[str, int]], n_blocks: int | None) -> str | None:
    """The name of the shallowest container of ``n_blocks`` numbered children (any non-empty one when
    ``n_blocks`` is unknown); the first such at equal depth; None if there is none.

    ``containers``: (name, number of children) in the model's own order; nested lists (experts, vision
    towers inside a block) are deeper, hence never picked over the blocks."""
    fits = [(name, n) for name, n in containers if n > 0 and (n_blocks is None or n == n_blocks)]
    if not fits:
        return None
    return min(fits, key=lambda c: c[0].count("."))[0]


def numbered_prefixes(names: Iterable[str]) -> list[tuple[str, int]]:
    """(prefix, count) for every dotted prefix followed by numbered parts 0…count−1 in tensor names, e.g.
    ``model.layers.7.mlp.up.weight`` -> ``model.layers`` (counted with its siblings). Gaps count as absent."""
    seen: dict[str, set[int]] = {}
    for name in names:
        parts = name.split(".")
        for i, p in enumerate(parts[:-1]):
            if p.isdigit() and i > 0:
                seen.setdefault(".".join(parts[:i]), set()).add(int(p))
    return [(prefix, len(ix)) for prefix, ix in seen.items() if ix == set(range(len(ix)))]


def block_index(name: str, prefix: str) -> int | None:
    """The block a tensor belongs to (``prefix.<i>.…``), or None for embeddings, final norm, head."""
    head = prefix + "."
    if not name.startswith(head):
        return None
    rest = name[len(head):].split(".", 1)[0]
    return int(rest) if rest.isdigit() else None
