"""Sampler: filters on crafted logits, sampling frequencies, seeds and logprobs; then the same
guarantees through the engine on SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.sampler import Sampler, apply_filters
from llmctl.agent.engine.sampling import SamplingParams


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float32).log()


def kept(row: torch.Tensor) -> set[int]:
    return set(torch.isfinite(row).nonzero().flatten().tolist())


def filters(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    rows = logits.shape[0]
    return apply_filters(
        logits,
        torch.full((rows,), top_k),
        torch.full((rows,), top_p, dtype=torch.float32),
        torch.full((rows,), min_p, dtype=torch.float32),
    )


def draw(logits: torch.Tensor, params: SamplingParams, n: int, seed: int = 0) -> list[int]:
    """n independent draws from one logits row, all from a single seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return Sampler()(logits.expand(n, -1), [params] * n, [gen] * n).token_ids


# -- filters ------------------------------------------------------------------------------------
def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = logits_of([0.4, 0.3, 0.2, 0.1])[None]
    assert kept(filters(probs, top_p=0.5)[0]) == {0, 1}
    assert kept(filters(probs, top_p=0.35)[0]) == {0}
    assert kept(filters(probs, top_p=0.8)[0]) == {0, 1, 2}
    assert kept(filters(probs, top_p=1.0)[0]) == {0, 1, 2, 3}


def test_top_p_works_on_unsorted_logits():
    row = logits_of([0.1, 0.3, 0.2, 0.4])[None]
    assert kept(filters(row, top_p=0.5)[0]) == {1, 3}


def test_top_p_after_top_k_uses_the_renormalised_top_k_distribution():
    # Within the top 2, token 0 has 0.4/0.7 = 0.57 >= 0.5 on its own (as in transformers and vLLM).
    probs = logits_of([0.4, 0.3, 0.2, 0.1])[None]
    assert kept(filters(probs, top_k=2, top_p=0.5)[0]) == {0}
    assert kept(filters(probs, top_k=3, top_p=0.5)[0]) == {0, 1}


def test_top_k_keeps_the_k_largest():
    row = torch.tensor([[0.5, 3.0, -1.0, 2.0, 1.0, 2.5]])
    assert kept(filters(row, top_k=3)[0]) == {1, 3, 5}
    assert kept(filters(row, top_k=1)[0]) == {1}
    for off in (0, -1, 6, 100):
        assert kept(filters(row, top_k=off)[0]) == set(range(6))


def test_min_p_keeps_tokens_with_at_least_min_p_times_the_top_probability():
    row = logits_of([0.5, 0.3, 0.15, 0.05])[None]
    assert kept(filters(row, min_p=0.5)[0]) == {0, 1}  # threshold 0.25
    assert kept(filters(row, min_p=0.2)[0]) == {0, 1, 2}  # threshold 0.1
    assert kept(filters(row, min_p=1.0)[0]) == {0}


def test_filters_apply_per_row_and_leave_kept_logits_unchanged():
    base = logits_of([0.4, 0.3, 0.2, 0.1])
    rows = base.expand(4, -1).clone()
    out = apply_filters(
        rows,
        torch.tensor([2, 0, 0, 0]),
        torch.tensor([1.0, 0.5, 1.0, 1.0]),
        torch.tensor([0.0, 0.0, 0.6, 0.0]),
    )
    assert [kept(r) for r in out] == [{0, 1}, {0, 1}, {0, 1}, {0, 1, 2, 3}]
    finite = torch.isfinite(out)
    assert torch.equal(out[finite], rows[finite])


# -- sampling -----------------------------------------------------------------------------------
def test_top_k_only_ever_samples_the_k_largest():
    row = torch.tensor([[1.0, 1.2, 0.9, 1.1, 0.8, 1.15, 0.7]])
    tokens = draw(row, SamplingParams(temperature=1.0, top_k=3), n=3000)
    assert set(tokens) == {1, 3, 5}


def test_top_p_and_min_p_only_ever_sample_allowed_tokens():
    row = logits_of([0.4, 0.3, 0.2, 0.1])[None]
    assert set(draw(row, SamplingParams(temperature=1.0, top_p=0.5), n=2000)) == {0, 1}
    row = logits_of([0.5, 0.3, 0.15, 0.05])[None]
    assert set(draw(row, SamplingParams(temperature=1.0, min_p=0.5), n=2000)) == {0, 1}


def test_sample_frequencies_follow_the_tempered_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 6000
    for temperature in (1.0, 2.0):
        tokens = torch.tensor(draw(probs.log()[None], SamplingParams(temperature=temperature), n=n, seed=3))
        freq = torch.bincount(tokens, minlength=4).float() / n
        expected = (probs.log() / temperature).softmax(-1)
        # 4 binomial standard deviations at n=6000 are at most 0.026.
        assert torch.allclose(freq, expected, atol=0.026), (temperature, freq, expected)


def test_renormalised_probabilities_after_top_p():
    tokens = torch.tensor(
        draw(logits_of([0.4, 0.3, 0.2, 0.1])[None], SamplingParams(top_p=0.5), n=6000, seed=5)
    )
    freq = torch.bincount(tokens, minlength=4).float() / 6000
    assert torch.allclose(freq, torch.tensor([4 / 7, 3 / 7, 0.0, 0.0]), atol=0.026)


def test_greedy_rows_take_the_argmax_inside_a_sampling_batch():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0), SamplingParams(temperature=0)]
    out = Sampler()(logits, params, [None, None, None])
    assert out.token_ids[0] == int(logits[0].argmax()) and out.token_ids[2] == int(logits[2].argmax())


def test_a_seeded_row_samples_the_same_tokens_wherever_it_sits_in_the_batch():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1000, generator=gen)
    p = SamplingParams(temperature=1.0)

    def sample(seed: int, rows: list[int]) -> list[int]:
        """Five steps of one seeded request whose logits row is logits[0], placed at batch position rows[step]."""
        own = torch.Generator().manual_seed(seed)
        tokens = []
        for step, row in enumerate(rows):
            batch = logits.roll(row, 0)
            gens = [None] * 4
            gens[row] = own
            tokens.append(Sampler(seed=step)(batch, [p] * 4, gens).token_ids[row])
        return tokens

    assert sample(7, [0, 0, 0, 0, 0]) == sample(7, [3, 1, 2, 0, 1])
    assert sample(7, [0] * 5) != sample(8, [0] * 5)


def test_logprobs_are_log_softmax_of_the_raw_logits_with_sorted_alternatives():
    logits = torch.randn(2, 100, generator=torch.Generator().manual_seed(2)) * 3
    params = [SamplingParams(temperature=0, logprobs=5), SamplingParams(temperature=0.7, logprobs=3, seed=1)]
    out = Sampler()(logits, params, [None, torch.Generator().manual_seed(1)])
    lsm = logits.log_softmax(-1)
    for row, n in enumerate((5, 3)):
        lp, alts = out.logprobs[row]
        assert lp == pytest.approx(float(lsm[row, out.token_ids[row]]), abs=1e-6)
        assert len(alts) == n
        values = [v for _, v in alts]
        assert values == sorted(values, reverse=True)
        assert [t for t, _ in alts] == lsm[row].topk(n).indices.tolist()
    assert out.logprobs[0][1][0][0] == out.token_ids[0]  # greedy: the chosen token is the best one


def test_no_logprobs_unless_asked_and_zero_alternatives_when_asked_for_zero():
    logits = torch.randn(2, 10)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0, logprobs=0)]
    out = Sampler()(logits, params, [None, None])
    assert out.logprobs[0] is None
    lp, alts = out.logprobs[1]
    assert alts == [] and lp == pytest.approx(float(logits[1].log_softmax(-1).max()), abs=1e-6)


# -- through the engine -------------------------------------------------------------------------
PROMPTS = ["The best thing about the mountains is", "Here is a short poem about the sea:", "def add(a, b):"]


@pytest.fixture(scope="module")
def engine(smollm2_path) -> LLMEngine:
    # One intra-op thread: 2 shared cores, and oversubscribed OpenMP threads slow each step ~10x.
    return LLMEngine(EngineConfig(model=str(smollm2_path), dtype="float32", num_threads=1))


def sampled(seed: int | None, **kw) -> SamplingParams:
    return SamplingParams(temperature=1.0, top_p=0.95, seed=seed, max_tokens=16, ignore_eos=True, **kw)


def test_same_seed_gives_the_same_tokens_alone_and_inside_a_batch(engine):
    alone = engine.generate([PROMPTS[0]], sampled(7))[0].output.token_ids
    again = engine.generate([PROMPTS[0]], sampled(7))[0].output.token_ids
    batch = engine.generate(
        [PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[0]], [sampled(None), sampled(7), sampled(11), sampled(8)]
    )
    assert again == alone
    assert batch[1].output.token_ids == alone
    assert batch[3].output.token_ids != alone


def test_different_seeds_give_different_tokens(engine):
    outs = engine.generate([PROMPTS[1]] * 3, [sampled(1), sampled(2), sampled(3)])
    assert len({tuple(o.output.token_ids) for o in outs}) == 3


def test_engine_logprobs_match_the_logits_it_sampled_from(engine):
    seen: list[tuple[list[str], torch.Tensor]] = []
    engine.logits_observer = lambda ids, logits: seen.append((list(ids), logits.clone()))
    engine.add_request("lp", PROMPTS[2], SamplingParams(temperature=0, max_tokens=6, logprobs=4))
    token_ids, logprobs = [], []
    try:
        while engine.has_unfinished():
            for out in engine.step():
                token_ids += out.output.delta_token_ids
                logprobs += out.output.logprobs  # per delta: the logprobs of the delta tokens
    finally:
        engine.logits_observer = None
    rows = [logits[ids.index("lp")] for ids, logits in seen if "lp" in ids]
    assert len(rows) == len(token_ids) == len(logprobs) == 6
    for row, token, lp in zip(rows, token_ids, logprobs, strict=True):
        lsm = row.log_softmax(-1)
        assert lp.token_id == token == int(row.argmax())
        assert math.isclose(lp.logprob, float(lsm[token]), abs_tol=1e-5)
        assert lp.token == engine.tokenizer.decode([token])
        assert [t for t, _, _ in lp.top] == lsm.topk(4).indices.tolist()
        values = [v for _, _, v in lp.top]
        assert values == sorted(values, reverse=True)
        assert all(s == engine.tokenizer.decode([t]) for t, s, _ in lp.top)
