"""The routing classifier and the rule grammar: what an operator can write after --rule, and how well the
classifier tells simple prompts from complex ones on prompts it never saw."""

from __future__ import annotations

import pytest

from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.gateway.model_route import asked_text, parse_rule
from llmctl.controlplane.gateway.route_classifier import (
    RouteClassifier,
    accuracy,
    default_classifier,
    labelled,
    split,
)


def test_the_classifier_is_right_on_at_least_nine_in_ten_held_out_prompts():
    (train, held) = split(*labelled())
    model = RouteClassifier.train(*train)
    assert accuracy(model, *train) == 1.0
    assert accuracy(model, *held) >= 0.9
    # A prompt's length alone does worse on the same held-out prompts (short complex ones, chatty simple ones).
    estimate = [-(-len(t) // 4) for t in train[0]]
    cut = max(range(1, 200), key=lambda n: sum((e <= n) == y for e, y in zip(estimate, train[1], strict=True)))
    by_length = sum((-(-len(t) // 4) <= cut) == y for t, y in zip(*held, strict=True)) / len(held[0])
    assert accuracy(model, *held) > by_length


def test_the_deployed_classifier_routes_greetings_and_keeps_real_work():
    model = default_classifier()
    assert model.is_simple("hello, thanks for the help!") and model.is_simple("translate 'dog' to Spanish")
    assert not model.is_simple("Write a Python function that merges two sorted lists and prove it is correct.")


@pytest.mark.parametrize("text, shown", [
    ("max-prompt-tokens=200", "max-prompt-tokens=200"),
    ("max_prompt_tokens=0200", "max-prompt-tokens=200"),
    ("regex=(?i)^(hi|thanks)", "regex=(?i)^(hi|thanks)"),
    ("regex=a=b", "regex=a=b"),
    ("classifier", "classifier"),
])
def test_rules_parse_to_their_canonical_form(text, shown):
    assert str(parse_rule(text)) == shown


@pytest.mark.parametrize("text, words", [
    ("", "a route needs a rule"),
    ("length=5", "unknown rule 'length'"),
    ("max-prompt-tokens=0", "between 1 and"),
    ("max-prompt-tokens=lots", "between 1 and"),
    ("max-prompt-tokens", "needs a value"),
    ("regex=(unclosed", "does not compile"),
    ("classifier=strict", "takes no value"),
])
def test_a_rule_that_cannot_work_is_refused_with_what_to_fix(text, words):
    with pytest.raises(InvalidArgument, match=words):
        parse_rule(text)


def test_rules_read_the_users_last_message_not_the_system_prompt():
    body = {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": [{"type": "text", "text": "thanks"}]}]}
    assert asked_text("chat", body) == "thanks"
    assert parse_rule("regex=^thanks$").matches("chat", body)
    assert not parse_rule("regex=terse").matches("chat", body)
    assert parse_rule("max-prompt-tokens=20").matches("completion", {"prompt": list(range(20))})
    assert not parse_rule("max-prompt-tokens=20").matches("completion", {"prompt": list(range(21))})
