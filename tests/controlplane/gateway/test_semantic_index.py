"""The semantic index on its own: scopes never mix, the entry bound evicts the least recently used, and a
deployment's new revisions drop the old ones' questions."""

from __future__ import annotations

import torch

from llmctl.controlplane.gateway.semantic_cache import SemanticIndex


def unit(*values: float) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(values, dtype=torch.float32), dim=0)


def test_only_the_same_scope_is_searched_and_the_most_similar_comes_first() -> None:
    index = SemanticIndex()
    index.add(b"scope-a", b"k1", 1, "chat", unit(1, 0, 0), "one", {1})
    index.add(b"scope-a", b"k2", 1, "chat", unit(1, 1, 0), "two", {1})
    index.add(b"scope-b", b"k3", 1, "chat", unit(1, 0.01, 0), "three", {1})
    found = index.nearest(b"scope-a", unit(1, 0.05, 0), 0.5, "chat", {1})
    assert [(n.key, n.text) for n in found] == [(b"k1", "one"), (b"k2", "two")]
    assert found[0].similarity > found[1].similarity >= 0.5
    assert index.nearest(b"scope-a", unit(0, 0, 1), 0.5, "chat", {1}) == []
    assert index.nearest(b"scope-c", unit(1, 0, 0), 0.5, "chat", {1}) == []


def test_the_entry_bound_evicts_the_least_recently_used() -> None:
    index = SemanticIndex(max_entries=2)
    index.add(b"s", b"old", 1, "chat", unit(1, 0), "old", {1})
    index.add(b"s", b"mid", 1, "chat", unit(0, 1), "mid", {1})
    (old,) = index.nearest(b"s", unit(1, 0), 0.9, "chat", {1})
    index.touch(b"s", old)  # a hit: "mid" is now the least recently used
    index.add(b"s", b"new", 1, "chat", unit(1, 1), "new", {1})
    assert index.counts() == {"chat": 2}
    assert index.nearest(b"s", unit(0, 1), 0.99, "chat", {1}) == []
    assert [n.key for n in index.nearest(b"s", unit(1, 0), 0.99, "chat", {1})] == [b"old"]


def test_a_new_set_of_revisions_drops_the_other_revisions_questions() -> None:
    index = SemanticIndex()
    index.add(b"s", b"k", 1, "chat", unit(1, 0), "q", {1})
    index.add(b"s2", b"k", 1, "other", unit(1, 0), "q", {1})  # the model is part of a scope
    assert index.nearest(b"s", unit(1, 0), 0.9, "chat", {2}) == []
    assert index.counts() == {"other": 1}
