"""Speculative decoding changes how fast tokens come, never which: greedy output equals plain decoding token for
token, and sampled tokens follow the target's distribution (chi-square goodness of fit against the exact
distribution, computed from the target's own logits), for a draft that is nearly always right and one that is
nearly always wrong. Plus the pieces: prompt lookup, the rejection rule, the adaptive draft budget.
"""

from __future__ import annotations

import random
import time

import pytest
import torch
from scipy import stats

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.errors import InvalidRequest
from llmctl.agent.engine.proposers import NgramIndex
from llmctl.agent.engine.rejection import verify_greedy, verify_sampled
from llmctl.agent.engine.sampler import filtered_probs
from llmctl.agent.engine.sampling import SamplingParams
from llmctl.agent.engine.speculative import (
    PRIOR_FIRST,
    Acceptance,
    StepCost,
    choose_drafts,
    draft_can_pay,
    expected_tokens,
)
from tests.factories import make_tiny_llama

SIGNIFICANCE = 1e-3
"""A chi-square p-value below this fails the test (fixed seeds: the outcome is deterministic)."""


# -- prompt lookup -----------------------------------------------------------------------------------------
def lookup(tokens: list[int], k: int, n_min: int = 1, n_max: int = 3) -> list[int]:
    index = NgramIndex(n_min, n_max)
    index.extend(tokens)
    return index.lookup(tokens, k)[0]


def test_ngram_proposes_what_followed_the_latest_occurrence_of_the_longest_suffix():
    #             0  1  2  3  4  5  6  7  8  9 10
    tokens = [5, 6, 7, 1, 9, 6, 7, 2, 8, 6, 7]
    # "6 7" occurred at 1-2 (then 1) and at 5-6 (then 2): the latest wins.
    assert lookup(tokens, 3) == [2, 8, 6]
    # "5 6 7" (3 tokens) beats "6 7" when it matches.
    tokens = [5, 6, 7, 1, 9, 6, 7, 2, 5, 6, 7]
    assert lookup(tokens, 2) == [1, 9]
    index = NgramIndex(1, 3)
    index.extend(tokens)
    assert index.lookup(tokens, 2)[1] == 3  # the matched length: acceptance is tracked per length


def test_ngram_proposes_nothing_without_a_match_and_at_most_k():
    assert lookup([1, 2, 3, 4], 4) == []
    assert lookup([1, 2, 3, 1, 2], 1) == [3]
    assert lookup([3, 3, 3, 3], 5, n_max=2) == [3]  # only what exists after the match
    assert lookup([1, 2, 3, 1], 4, n_min=2) == []  # a 1-token match is below n_min


def test_ngram_index_grows_with_the_sequence_without_rebuilding():
    index = NgramIndex(1, 2)
    tokens = [4, 5, 6]
    index.extend(tokens)
    tokens += [4, 5]
    index.extend(tokens)
    assert index.upto == 5
    assert index.lookup(tokens, 2) == ([6, 4], 2)


# -- the draft budget -------------------------------------------------------------------------------------
def geometric(first: float, nxt: float, cap: int) -> list[float]:
    return [first * nxt ** (j - 1) for j in range(1, cap + 1)]


def line(a: float, b: float):
    return lambda rows: a + b * rows


def test_drafts_where_an_extra_row_is_cheap_and_not_where_it_is_dear():
    # Batch 1 on a CPU: a step of 1 row costs 10 ms, each extra row 0.2 ms: an 80% proposer is worth 8 drafts.
    assert choose_drafts([geometric(0.8, 0.8, 8)], 1, line(0.01, 0.0002)) == [8]
    # Each row as dear as the step itself (compute-bound): drafting loses unless nearly always right.
    assert choose_drafts([geometric(0.7, 0.7, 8)], 1, line(0.0, 0.01)) == [0]
    # Two sequences: the good proposer drafts, the bad one decodes plainly.
    assert choose_drafts([geometric(0.7, 0.9, 4), geometric(0.05, 0.5, 4)], 2, line(0.01, 0.001)) == [4, 0]


def test_a_draft_model_forward_per_position_is_paid_for():
    cheap_rows = line(0.01, 0.0001)
    assert choose_drafts([geometric(0.9, 0.9, 4)], 1, cheap_rows, per_position=0.001) == [4]
    # A draft forward as dear as a target step (the target drafting for itself) never pays.
    assert choose_drafts([geometric(0.9, 0.9, 4)], 1, cheap_rows, per_position=0.01) == [0]


def test_unexplored_rates_are_tried_and_poor_ones_given_up():
    fresh = Acceptance()
    optimistic = expected_tokens(Acceptance(), fresh, 1)[0]
    assert optimistic > PRIOR_FIRST  # nothing seen yet: tried as if better than the prior
    poor = Acceptance()
    for _ in range(200):
        poor.record(drafted=2, accepted=0, memory=0.98)
    assert expected_tokens(Acceptance(), poor, 1)[0] < 0.1
    # A sequence with its own good record keeps drafting where the shared rate is poor.
    own = Acceptance()
    for _ in range(50):
        own.record(drafted=2, accepted=2, memory=0.9)
    assert expected_tokens(own, poor, 1)[0] > 0.8


def test_step_cost_curve_interpolates_and_follows_a_slower_box():
    cost = StepCost([(1, 0.010), (16, 0.012), (64, 0.060)])
    assert cost(1) == pytest.approx(0.010)
    assert cost(8) == pytest.approx(0.010 + 0.002 * 7 / 15)
    assert cost(40) == pytest.approx(0.036)
    assert cost(100) == pytest.approx(0.096)  # past the last point, the last slope
    for _ in range(200):
        cost.observe(16, 0.024)  # twice what was measured at start-up
    assert cost(16) == pytest.approx(0.024, rel=0.01)
    assert cost(64) == pytest.approx(0.120, rel=0.01)


def test_step_cost_measurement_never_falls():
    times = iter([0.02, 0.02, 0.01, 0.01, 0.03, 0.03] + [0.05] * 40)
    cost = StepCost.measure(lambda rows: time.sleep(next(times) / 10), max_rows=16)
    assert cost.rows == [1, 2, 4, 8, 16]
    assert all(b >= a for a, b in zip(cost.seconds, cost.seconds[1:], strict=False))


# -- the rejection rule on known distributions ---------------------------------------------------------------
def test_greedy_verification_keeps_drafts_up_to_the_first_disagreement():
    logits = torch.full((4, 10), -1.0)
    for row, best in enumerate([3, 4, 5, 6]):
        logits[row, best] = 1.0
    assert verify_greedy(logits, [3, 4, 5]) == [3, 4, 5, 6]  # all accepted, plus the bonus
    assert verify_greedy(logits, [3, 9, 5]) == [3, 4]  # the target's own token replaces the first miss
    assert verify_greedy(logits, [8, 4, 5]) == [3]
    assert verify_greedy(logits[:1], []) == [3]


TOP_P = 0.9
VOCAB = 24


def target_rows(seed: int, rows: int) -> torch.Tensor:
    """[rows, VOCAB] filtered probabilities at temperature 1, top-p 0.9, from random logits."""
    logits = torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 1.5
    return filtered_probs(logits, [SamplingParams(temperature=1.0, top_p=TOP_P)] * rows)


def draft_rows(kind: str, p: torch.Tensor, seed: int) -> torch.Tensor | None:
    if kind == "good":  # close to the target: nearly always accepted
        q = p * (1 + 0.1 * torch.rand(p.shape, generator=torch.Generator().manual_seed(seed))) + 1e-4
    elif kind == "bad":  # mass where the target has little or none
        q = (1.0 - p) ** 8
    else:
        return None
    return q / q.sum(-1, keepdim=True)


def gof_pvalue(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Chi-square goodness of fit, categories with fewer than 5 expected counts pooled into one. A count where
    the distribution has no mass at all is impossible: p-value 0."""
    if bool((observed[expected_probs <= 0] > 0).any()):
        return 0.0
    expected = expected_probs.double() / expected_probs.double().sum() * float(observed.sum())
    big = expected >= 5
    obs = torch.cat([observed[big].double(), observed[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    if float(exp[-1]) == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs.numpy(), exp.numpy()).pvalue)


def sample_positions(p: torch.Tensor, q: torch.Tensor | None, trials: int, rule=verify_sampled):
    """Counts of the first emitted token, and of the second one where the first draft was accepted."""
    gen = torch.Generator().manual_seed(1)
    first = torch.zeros(VOCAB)
    second = torch.zeros(VOCAB)
    k = p.shape[0] - 1
    for _ in range(trials):
        if q is None:  # prompt lookup: always the same draft, the target's second most likely token
            drafts = [int(p[j].argsort(descending=True)[1]) for j in range(k)]
        else:
            drafts = [int(torch.multinomial(q[j], 1, generator=gen)) for j in range(k)]
        out = rule(p, drafts, q, gen)
        first[out[0]] += 1
        if out[0] == drafts[0] and len(out) > 1:
            second[out[1]] += 1
    return first, second


@pytest.mark.parametrize("kind", ["good", "bad", "point-mass"])
def test_rejection_sampling_emits_the_targets_distribution_whatever_the_draft(kind):
    p = target_rows(seed=3, rows=3)  # two drafted positions and the bonus row
    q = draft_rows(kind, p[:2], seed=4)
    first, second = sample_positions(p, q, trials=6000)
    assert gof_pvalue(first, p[0]) > SIGNIFICANCE
    # Given the first draft was accepted, the next token follows the target's next row.
    assert second.sum() > 300
    assert gof_pvalue(second, p[1]) > SIGNIFICANCE


def test_the_goodness_of_fit_test_catches_a_wrong_rule():
    def accept_everything(p, drafts, q, gen):
        return drafts + [int(torch.multinomial(p[len(drafts)], 1, generator=gen))]

    p = target_rows(seed=3, rows=3)
    first, _ = sample_positions(p, draft_rows("bad", p[:2], seed=4), trials=6000, rule=accept_everything)
    assert gof_pvalue(first, p[0]) < SIGNIFICANCE


# -- in the engine ----------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def keep_every_draft(monkeypatch):
    """The tiny drafts here cost what the target does; the engine would drop them (draft_can_pay), and these
    tests must verify their drafts. test_a_draft_that_cannot_pay_is_dropped checks the dropping."""
    from llmctl.agent.engine import speculative

    monkeypatch.setattr(speculative, "KEEP_EVERY_DRAFT", True)


@pytest.fixture(scope="module")
def bad_draft(tmp_path_factory) -> str:
    """Another random Llama with the same tokenizer: its drafts are nearly always rejected."""
    return str(make_tiny_llama(tmp_path_factory.mktemp("bad-draft"), seed=1))


def spec_engine(target, method: str, draft: str | None = None, **overrides) -> LLMEngine:
    engine = LLMEngine(EngineConfig(
        model=str(target), dtype="float32", num_threads=1, speculative_method=method, speculative_model=draft,
        num_speculative_tokens=3, **overrides,
    ))
    engine.speculator.adaptive = False  # draft all it can, so that every step verifies
    return engine


def repetitive_prompts(seed: int = 0) -> list[list[int]]:
    """16 prompts whose tokens repeat (so prompt lookup finds matches), some sharing prefixes, 5-150 tokens."""
    rng = random.Random(seed)
    prompts = []
    for n in [5, 150, 17, 64, 33, 120, 9, 80, 48, 96, 12, 70, 40, 100, 24, 60]:
        motif = [rng.randrange(3, 300) for _ in range(rng.randint(2, 6))]
        prompts.append((motif * n)[:n])
    prompts[5] = prompts[1][:60] + prompts[5][60:]
    prompts[13] = prompts[1][:90] + prompts[13][90:]
    return prompts


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


CASES = {
    "ngram": ("ngram", None),
    "draft-bad": ("draft", "bad"),
    "draft-good": ("draft", "self"),
    "self-int4": ("self-int4", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_speculative_output_equals_plain_decoding_with_chunking_caching_and_preemption(
    tiny_llama, bad_draft, case, tmp_path, monkeypatch
):
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path))  # where self-int4 keeps its AWQ copy
    method, which = CASES[case]
    draft = {"bad": bad_draft, "self": str(tiny_llama), None: None}[which]
    prompts = repetitive_prompts()
    params = greedy(20)
    plain = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", num_threads=1))
    reference = [o.output.token_ids for o in plain.generate(prompts, params)]
    pool = -(-(150 + 20 + 3) // 16) + 3  # the longest request and a little: far too small for all 16
    engine = spec_engine(tiny_llama, method, draft, max_num_batched_tokens=64, num_kv_blocks=pool)
    assert [o.output.token_ids for o in engine.generate(prompts, params)] == reference
    s = engine.stats()
    assert s.num_preemptions > 0
    assert s.spec_num_draft_tokens > 100
    assert 0 < s.spec_num_accepted_tokens < s.spec_num_draft_tokens or case in ("draft-good", "self-int4")
    if which == "self":
        assert s.spec_num_accepted_tokens == s.spec_num_draft_tokens  # a draft identical to the target
    assert s.num_seq_forwards < s.num_generation_tokens or which == "bad"
    assert (s.num_running, s.num_waiting, s.num_used_blocks) == (0, 0, 0)
    # Again, now from the prefix cache: drafted tokens never entered it, so nothing changes.
    assert [o.output.token_ids for o in engine.generate(prompts, params)] == reference
    assert engine.stats().prefix_cache_hits > s.prefix_cache_hits


def test_the_self_int4_draft_is_quantized_once_and_reused(tiny_llama, tmp_path, monkeypatch):
    from llmctl.agent.engine.quantization import checkpoint

    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path))
    spec_engine(tiny_llama, "self-int4")
    (copy,) = (tmp_path / "drafts").iterdir()
    assert (copy / "config.json").is_file() and "quantization_config" in (copy / "config.json").read_text()

    def never(*args, **kwargs):
        raise AssertionError("the AWQ copy was made again")

    monkeypatch.setattr(checkpoint, "quantize_to_folder", never)
    engine = spec_engine(tiny_llama, "self-int4")
    assert engine.generate([[5, 6, 7, 5, 6]], greedy(4))[0].output.token_ids
    assert list((tmp_path / "drafts").iterdir()) == [copy]


def test_a_draft_model_pays_only_if_its_forward_is_well_below_the_targets_step():
    cost = StepCost([(1, 0.010), (8, 0.012)])
    assert draft_can_pay(0.007, cost)  # a 4-bit copy at 70% of the target: worth trying where drafts are right
    assert not draft_can_pay(0.008, cost)  # 1.25 x 8 ms: a fully accepted draft would only break even
    assert not draft_can_pay(0.010, cost)  # the target drafting for itself


def test_a_draft_that_cannot_pay_is_dropped_with_a_warning(tiny_llama, tmp_path, monkeypatch, caplog):
    from llmctl.agent.engine import speculative

    monkeypatch.setattr(speculative, "KEEP_EVERY_DRAFT", False)
    # A draft far bigger than the target (same tokenizer): its forward costs several target steps, however
    # noisy the box (one the target's own size measured 0.8-1.7x of its step, too close to the 0.8 bar).
    big = make_tiny_llama(tmp_path / "big-draft", seed=2, hidden_size=256, intermediate_size=1024,
                          num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)
    with caplog.at_level("WARNING", logger="llmctl.engine"):
        engine = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", num_threads=1,
                                        speculative_method="draft", speculative_model=str(big)))
    assert engine.speculator is None
    assert "speculative decoding off" in caplog.text and "no draft could pay" in caplog.text
    plain = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", num_threads=1))
    prompts = repetitive_prompts()[:4]
    assert ([o.output.token_ids for o in engine.generate(prompts, greedy(8))]
            == [o.output.token_ids for o in plain.generate(prompts, greedy(8))])
    assert engine.stats().spec_num_drafts == 0 and engine.stats().num_seq_forwards == 4 * 8


def test_a_draft_with_another_tokenizer_is_refused(tiny_llama, smollm2_path):
    with pytest.raises(InvalidRequest, match="another tokenizer"):
        LLMEngine(EngineConfig(model=str(tiny_llama), speculative_method="draft",
                               speculative_model=str(smollm2_path), num_threads=1))


def test_speculative_flags_are_checked():
    with pytest.raises(InvalidRequest, match="speculative method"):
        EngineConfig(model="m", speculative_method="medusa")
    with pytest.raises(InvalidRequest, match="speculative-model"):
        EngineConfig(model="m", speculative_method="draft")
    with pytest.raises(InvalidRequest, match="num_speculative_tokens"):
        EngineConfig(model="m", speculative_method="ngram", num_speculative_tokens=0)


SAMPLES = 3000
SAMPLED = SamplingParams(temperature=1.0, top_p=TOP_P, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def second_token_distribution(tiny_llama):
    """The exact distribution of the second generated token: sum over t1 of p(t1 | prompt) p(. | prompt, t1),
    each filtered at temperature 1 and top-p 0.9, from the target's own logits."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", num_threads=1))
    # Every ordinary token once, so that prompt lookup finds whatever the first token is and drafts after it.
    prompt = list(range(3, len(engine.tokenizer)))
    random.Random(2).shuffle(prompt)
    p1 = filtered_probs(engine.score([prompt])[0][-1:], [SAMPLED])[0]
    support = p1.nonzero()[:, 0].tolist()
    rows = torch.stack([row[-1] for row in engine.score([prompt + [t] for t in support])])
    p2 = filtered_probs(rows, [SAMPLED] * len(support))
    return prompt, (p1[support][:, None] * p2).sum(0)


@pytest.mark.parametrize("case", ["plain", "ngram", "draft-bad", "draft-good"])
def test_sampled_tokens_follow_the_targets_distribution(tiny_llama, bad_draft, second_token_distribution, case):
    prompt, expected = second_token_distribution
    if case == "plain":
        engine = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", num_threads=1))
    else:
        method, which = CASES[case]
        engine = spec_engine(tiny_llama, method, {"bad": bad_draft, "self": str(tiny_llama), None: None}[which])
    engine.sampler.generator.manual_seed(5)
    outs = engine.generate([prompt] * SAMPLES, SAMPLED)
    counts = torch.bincount(torch.tensor([o.output.token_ids[1] for o in outs]), minlength=expected.shape[0])
    assert gof_pvalue(counts.float(), expected) > SIGNIFICANCE
    if case != "plain":
        s = engine.stats()
        assert s.spec_num_draft_tokens > SAMPLES  # the second token went through verification


@pytest.mark.parametrize("case", ["ngram", "draft-bad", "draft-good"])
def test_a_seeded_request_gives_the_tokens_of_plain_decoding_whatever_its_batch_and_drafts(
    tiny_llama, bad_draft, case
):
    method, which = CASES[case]
    prompt = repetitive_prompts()[3]
    seeded = SamplingParams(temperature=1.0, top_p=TOP_P, max_tokens=12, seed=7, ignore_eos=True)
    plain = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", num_threads=1))
    reference = plain.generate([prompt], seeded)[0].output.token_ids
    engine = spec_engine(tiny_llama, method, {"bad": bad_draft, "self": str(tiny_llama), None: None}[which])
    assert engine.generate([prompt], seeded)[0].output.token_ids == reference
    others = SamplingParams(temperature=0.8, max_tokens=12, ignore_eos=True)
    batch = engine.generate(repetitive_prompts(1)[:5] + [prompt], [others] * 5 + [seeded])
    assert batch[-1].output.token_ids == reference
    s = engine.stats()
    assert s.spec_num_draft_tokens > 0
    if which == "self":
        assert s.spec_num_accepted_tokens >= 0.99 * s.spec_num_draft_tokens  # a draft that is the target
