"""The quality judgement as a pure function: the reference itself and small losses stay ok, real losses turn
degraded quickly, and over many looks at no loss the false-alarm rate stays within its Bonferroni bound."""

from __future__ import annotations

import json
import random
from pathlib import Path

from llmctl.controlplane.db.models import QualityState
from llmctl.controlplane.quality.judge import JudgePolicy, ScoredPair, judge

CALIBRATION = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quality-calibration.json"
THRESHOLD = 0.1


def pair(logprob_change: float, top1_change: float = 0.0, base: float = -0.6) -> ScoredPair:
    return ScoredPair(base + logprob_change, 1.0 + top1_change, base, 1.0)


def first_degraded(pairs: list[ScoredPair], policy: JudgePolicy = JudgePolicy()) -> int | None:
    """How many samples it takes, looking after each one as the worker does."""
    for n in range(1, len(pairs) + 1):
        if judge(pairs[:n], THRESHOLD, policy).state == QualityState.DEGRADED:
            return n
    return None


def test_too_few_samples_are_ok_and_say_so():
    verdict = judge([pair(-5.0)] * 9, THRESHOLD)
    assert verdict.state == QualityState.OK and verdict.p_value is None
    assert "too few to judge" in verdict.details(THRESHOLD)["summary"]


def test_the_reference_judged_against_itself_is_ok():
    verdict = judge([pair(0.0)] * 200, THRESHOLD)
    assert (verdict.state, verdict.p_value, verdict.median_logprob_change) == (QualityState.OK, 1.0, 0.0)


def test_a_loss_within_tolerance_is_ok_and_a_larger_one_is_degraded_within_a_few_dozen_samples():
    rng = random.Random(1)
    small = [pair(-0.05 + rng.gauss(0, 0.02)) for _ in range(250)]
    assert first_degraded(small) is None
    large = [pair(-0.3 + rng.gauss(0, 0.1)) for _ in range(100)]
    taken = first_degraded(large)
    assert taken is not None and taken <= 25, taken
    details = judge(large, THRESHOLD).details(THRESHOLD)
    assert details["median_logprob_change"] < -0.2 and "tolerance 0.1" in details["summary"]


def test_losing_top1_agreement_alone_is_degraded():
    pairs = [pair(0.0, top1_change=-0.25) for _ in range(30)]
    verdict = judge(pairs, THRESHOLD)
    assert verdict.state == QualityState.DEGRADED and verdict.median_top1_change == -0.25


def test_only_the_latest_window_counts():
    policy = JudgePolicy(window=20)
    recovered = [pair(-0.5)] * 50 + [pair(0.0)] * 20
    assert judge(recovered, THRESHOLD, policy).state == QualityState.OK
    assert judge(recovered[:50], THRESHOLD, policy).state == QualityState.DEGRADED


def test_false_alarms_over_250_looks_stay_within_the_bonferroni_bound():
    # No real loss, noisy scores (the spread sampled decoding gives): the chance of any false `degraded`
    # over 250 looks is at most 250 * 2e-4 = 5%; 40 seeded runs expect at most 2.
    rng = random.Random(7)
    alarms = 0
    for _ in range(40):
        pairs = [pair(rng.gauss(0, 0.5), top1_change=rng.gauss(0, 0.1)) for _ in range(250)]
        alarms += first_degraded(pairs) is not None
    assert alarms <= 2, alarms


def calibration_pairs(candidate: str, reference: str) -> list[ScoredPair]:
    runs = json.loads(CALIBRATION.read_text())["runs"]
    ref = {r["prompt"]: r for r in runs[reference]}
    return [ScoredPair(r["mean_logprob"], r["top1"], ref[r["prompt"]]["mean_logprob"], ref[r["prompt"]]["top1"])
            for r in runs[candidate] if r["prompt"] in ref]


def test_on_smollm2_answers_rtn4_is_caught_and_int8_is_not():
    # Real scores of SmolLM2 answers (benchmarks/quality_calibration.py): greedy answers of each revision,
    # scored by the float reference against its own answers to the same 150 prompts, in 4 random orders.
    rtn4 = calibration_pairs("rtn4/greedy", "reference/greedy")
    int8 = calibration_pairs("int8/greedy", "reference/greedy")
    rng = random.Random(3)
    for _ in range(4):
        taken = first_degraded(rng.sample(rtn4, 100))
        assert taken is not None and taken <= 100
        assert first_degraded([rng.choice(int8) for _ in range(200)]) is None
