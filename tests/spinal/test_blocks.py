"""One block-list rule, read from a model's modules and from a checkpoint's tensor names, counts the same blocks."""

from __future__ import annotations

import pytest

from conftest import ARCHS, build_model
from spinal.blocks import block_index, numbered_prefixes, pick
from spinal.capture.discover import block_list


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_modules_and_tensor_names_give_the_same_blocks(arch):
    model = build_model(arch)
    name, blocks = block_list(model)
    names = list(model.state_dict())
    assert pick(numbered_prefixes(names), len(blocks)) == name
    owned = {block_index(n, name) for n in names} - {None}
    assert owned == set(range(len(blocks)))  # every block owns tensors; embeddings and head own none
    assert block_index(f"{name}.{len(blocks) - 1}.x.weight", name) == len(blocks) - 1
    assert block_index(f"{name}x.0.weight", name) is None  # a longer name that only starts alike


def test_the_shallowest_list_of_the_right_length_wins_over_nested_and_gapped_ones():
    names = [f"model.layers.{i}.mlp.experts.{j}.w" for i in range(3) for j in range(3)]
    names += ["model.embed.weight", "vision.blocks.0.w", "vision.blocks.2.w"]  # a gap: not a list of 3
    found = dict(numbered_prefixes(names))
    assert found["model.layers"] == 3 and "vision.blocks" not in found
    assert pick(numbered_prefixes(names), 3) == "model.layers"  # the experts (3 each) are deeper
    assert pick(numbered_prefixes(names), 4) is None
    assert pick([("a.b", 2), ("c", 2)], None) == "c"  # unknown count: the shallowest non-empty list
