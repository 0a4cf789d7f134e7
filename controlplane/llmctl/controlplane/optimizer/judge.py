"""Whether one optimizer step's candidate is kept, as pure functions of its measurements (no SQL, no I/O).

Speed. The current best (A) and the candidate (B) are measured one at a time, interleaved in time:
A0 B0 A1 B1 ... A(n-1) B(n-1) An (the closing An may be missing). Each B_i is compared with the geometric
mean of the A runs on either side of it, sqrt(A_i * A_(i+1)) (A_i alone where there is no A_(i+1)), so a
machine that drifts steadily over the run (log-linear in time: warming up, throttling) cancels out of every
pair. Per pair g_i = log(B_i / ref_i) (log(ref_i / B_i) when lower is better); the mean of g gets a Student
t interval with n - 1 degrees of freedom. A gain is reported as a fraction: for a higher-is-better metric
exp(g) - 1 (0.12: 12% more throughput), for a lower-is-better one 1 - exp(-g) (0.12: 12% less latency,
memory or cost). It counts only when the interval's lower bound exceeds the minimum gain.

Quality drops of a candidate against the deployment's quality reference, from `llmctl eval` (a drop is a
fraction; negative when the candidate is better, and kept negative):
- perplexity: candidate / reference - 1;
- kl_divergence: KL(reference || candidate) in nats per token over the reference's own nats per token,
  ln(reference perplexity): the extra surprise as a share of the surprise there already is (the
  reference's KL against itself is 0);
- top1_agreement: 1 - the candidate's agreement with the reference's top-1 token (the reference agrees
  with itself);
- accuracy (multiple choice): (reference - candidate) / reference; omitted when either is missing or the
  reference scored 0. With the items' verdicts on both sides (`item_correct`, the same items in the same
  order), the drop also carries the items the candidate lost and gained, and it fails only when it is beyond
  the noise of a few flipped items as well as beyond the maximum: an exact one-sided McNemar test on the
  discordant items (lost ~ Binomial(lost + gained, 1/2) if nothing changed) must give p < ACCURACY_ALPHA. One
  item of a 60-item set is 1.7 points of accuracy, 2.9% of a 0.583 reference: a bar of 2% would otherwise
  reject any change that moves one item's arithmetic (a larger KV pool batches the scoring differently, and
  bf16 GEMMs round by batch shape). The token-level metrics above keep the fine-grained bar.

A candidate is kept when no quality metric drops by more than the maximum, every SLO holds and the speed
gain is beyond noise; otherwise every failed criterion is reported, with its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

QUALITY_METRICS = ("perplexity", "kl_divergence", "top1_agreement", "accuracy")
ACCURACY_ALPHA = 0.05

METRIC_LABELS = {
    "throughput_tok_s": "throughput",
    "ttft_p95_ms": "TTFT p95",
    "tpot_p95_ms": "TPOT p95",
    "memory_bytes": "memory",
    "cost_per_1m_usd": "cost per 1M tokens",
}
QUALITY_LABELS = {
    "perplexity": "perplexity",
    "kl_divergence": "KL divergence",
    "top1_agreement": "top-1 agreement",
    "accuracy": "accuracy",
}


@dataclass(frozen=True)
class Gain:
    """How much better the candidate is on one metric, as a fraction with its interval."""

    metric: str
    estimate: float
    """0.12: 12% better (higher throughput, or 12% lower for a lower-is-better metric)."""
    low: float
    high: float
    pairs: int
    higher_is_better: bool = True
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def interleaved_gain(a: Sequence[float], b: Sequence[float], *, metric: str, higher_is_better: bool,
                     confidence: float = 0.95) -> Gain:
    """The gain of B over A from measurements taken in the order A0 B0 A1 B1 ... B(n-1) [An]."""
    n = len(b)
    if len(a) not in (n, n + 1):
        raise ValueError(f"{metric}: interleaved measurements need len(a) == len(b) or len(b) + 1 "
                         f"(A0 B0 A1 B1 ... [An]), got {len(a)} A and {n} B")
    if n < 2:
        raise ValueError(f"{metric}: at least 2 interleaved pairs are needed for an interval, got {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    _check_positive(metric, "A", a)
    _check_positive(metric, "B", b)
    sign = 1.0 if higher_is_better else -1.0
    g = []
    for i, value in enumerate(b):
        log_ref = (math.log(a[i]) + math.log(a[i + 1])) / 2 if i + 1 < len(a) else math.log(a[i])
        g.append(sign * (math.log(value) - log_ref))
    mean = sum(g) / n
    if max(g) - min(g) <= 1e-12 * max(1.0, abs(mean)):
        half = 0.0  # identical ratios: no spread to build an interval from
    else:
        from scipy import stats

        sd = math.sqrt(sum((x - mean) ** 2 for x in g) / (n - 1))
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    to_gain = _to_gain(higher_is_better)
    return Gain(metric=metric, estimate=to_gain(mean), low=to_gain(mean - half), high=to_gain(mean + half),
                pairs=n, higher_is_better=higher_is_better, confidence=confidence)


def exact_gain(a: float, b: float, *, metric: str, higher_is_better: bool) -> Gain:
    """The gain of B over A on a metric without measurement noise (bytes of memory): a point, no interval."""
    _check_positive(metric, "A", [a])
    _check_positive(metric, "B", [b])
    estimate = _to_gain(higher_is_better)(math.log(b / a) if higher_is_better else math.log(a / b))
    return Gain(metric=metric, estimate=estimate, low=estimate, high=estimate, pairs=1,
                higher_is_better=higher_is_better)


def _to_gain(higher_is_better: bool):
    # g is a log-ratio oriented so that positive is better.
    if higher_is_better:
        return lambda g: math.exp(g) - 1
    return lambda g: 1 - math.exp(-g)


def _check_positive(metric: str, arm: str, values: Sequence[float]) -> None:
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or value <= 0:
            raise ValueError(f"{metric}: measurement {arm}{i} must be a positive finite number, got {value!r}")


def quality_drops(candidate: dict, reference: dict) -> dict[str, dict]:
    """Per quality metric {"candidate", "reference", "drop"} from two `llmctl eval` results (see above)."""
    for side, result in (("candidate", candidate), ("reference", reference)):
        for key in ("perplexity", "kl_divergence", "top1_agreement"):
            value = result.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"the {side}'s eval result has no valid {key}: {value!r}")
    ref_ppl = reference["perplexity"]
    if ref_ppl <= 1:
        raise ValueError(f"the reference's perplexity must be above 1, got {ref_ppl!r}")
    drops = {
        "perplexity": {"candidate": candidate["perplexity"], "reference": ref_ppl,
                       "drop": candidate["perplexity"] / ref_ppl - 1},
        "kl_divergence": {"candidate": candidate["kl_divergence"], "reference": reference["kl_divergence"],
                          "drop": candidate["kl_divergence"] / math.log(ref_ppl)},
        "top1_agreement": {"candidate": candidate["top1_agreement"], "reference": reference["top1_agreement"],
                           "drop": 1 - candidate["top1_agreement"]},
    }
    cand_acc, ref_acc = candidate.get("accuracy"), reference.get("accuracy")
    if cand_acc is not None and ref_acc is not None and ref_acc != 0:
        drops["accuracy"] = {"candidate": cand_acc, "reference": ref_acc, "drop": (ref_acc - cand_acc) / ref_acc}
        cand_items, ref_items = candidate.get("item_correct"), reference.get("item_correct")
        if cand_items and ref_items and len(cand_items) == len(ref_items):
            lost = sum(1 for c, r in zip(cand_items, ref_items, strict=True) if r and not c)
            gained = sum(1 for c, r in zip(cand_items, ref_items, strict=True) if c and not r)
            drops["accuracy"].update(items=len(ref_items), lost=lost, gained=gained,
                                     p_value=mcnemar_p(lost, gained))
    return drops


def mcnemar_p(lost: int, gained: int) -> float:
    """One-sided exact McNemar p-value that the candidate loses items: P(X >= lost), X ~ Binomial(lost +
    gained, 1/2), the chance of losing at least that many of the discordant items if neither side were better."""
    if lost == 0:
        return 1.0
    from scipy import stats

    return float(stats.binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue)


@dataclass(frozen=True)
class Decision:
    kept: bool
    reasons: tuple[str, ...]
    """Every failed criterion (quality, then SLOs, then gain), or why it was kept."""

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def quality_failures(quality: dict[str, dict] | None, max_drop: float) -> list[str]:
    """One line per quality metric that drops by more than max_drop; None: the numerics did not change."""
    if quality is None:
        return []
    failures = []
    for name in _quality_order(quality):
        entry = quality[name]
        drop = entry["drop"]
        if drop <= max_drop or entry.get("p_value", 0.0) >= ACCURACY_ALPHA:
            continue
        limit = _pct(max_drop)
        cand, ref = entry["candidate"], entry["reference"]
        if name == "perplexity":
            text = f"perplexity {drop:+.2%} > {limit} ({cand:.3f} vs {ref:.3f})"
        elif name == "kl_divergence":
            # drop > max_drop >= 0 here, so cand / drop is the reference's nats per token
            text = (f"KL divergence {cand:.4f} nats/token (drop {drop:.2%} of the reference's "
                    f"{cand / drop:.3f} nats/token > {limit})")
        elif name == "top1_agreement":
            text = f"top-1 agreement {cand:.2%} (drop {drop:.2%} > {limit})"
        elif name == "accuracy":
            text = f"accuracy {cand:.3f} vs {ref:.3f} (drop {drop:.2%} > {limit})"
            if "p_value" in entry:
                text = (f"accuracy {cand:.3f} vs {ref:.3f} (drop {drop:.2%} > {limit}; {entry['lost']} of "
                        f"{entry['items']} items lost, {entry['gained']} gained, McNemar p {entry['p_value']:.3f} "
                        f"< {ACCURACY_ALPHA:g})")
        else:
            text = f"{name} {cand:g} vs {ref:g} (drop {drop:.2%} > {limit})"
        failures.append(f"quality: {text}")
    return failures


def decide(*, gain: Gain | None, min_gain: float, quality: dict[str, dict] | None, max_quality_drop: float,
           slos: Sequence[tuple[str, float, float]] = ()) -> Decision:
    """Keep when no quality metric drops beyond max_quality_drop, every SLO (name, measured_ms, limit_ms)
    holds and the gain's lower bound exceeds min_gain; gain None: speed was not measured."""
    failures = quality_failures(quality, max_quality_drop)
    for name, measured, limit in slos:
        if measured is None:
            failures.append(f"SLO: {name} not measured (limit {_ms(limit)} ms)")
        elif measured > limit:
            failures.append(f"SLO: {name} {_ms(measured)} ms > {_ms(limit)} ms")
    if gain is None:
        return Decision(False, tuple(failures) or ("speed not measured",))
    if gain.low <= min_gain:
        bound = (f"the lower bound must exceed {_pct(min_gain, sign=True)}" if gain.higher_is_better
                 else f"the upper bound must be below {_pct(-min_gain, sign=True)}")
        failures.append(f"no gain beyond noise: {describe_gain(gain)}; {bound}")
    if failures:
        return Decision(False, tuple(failures))
    reasons = [f"{describe_gain(gain)} beyond the {_pct(min_gain)} minimum"]
    if quality is None:
        reasons.append("quality unchanged (engine setting only)")
    elif not quality:
        reasons.append("quality not reported")
    else:
        within = [name for name in _quality_order(quality) if quality[name]["drop"] <= max_quality_drop]
        if within:
            worst = max(within, key=lambda name: quality[name]["drop"])
            reasons.append(f"quality within {_pct(max_quality_drop)} (worst: {QUALITY_LABELS.get(worst, worst)} "
                           f"drop {quality[worst]['drop']:.2%})")
        for name in _quality_order(quality):
            entry = quality[name]
            if name not in within:  # beyond the maximum but not beyond noise (see quality_failures)
                reasons.append(f"{QUALITY_LABELS.get(name, name)} drop {entry['drop']:.2%} is {entry['lost']} of "
                               f"{entry['items']} items lost, {entry['gained']} gained: not beyond noise "
                               f"(McNemar p {entry['p_value']:.3f})")
    return Decision(True, tuple(reasons))


def describe_gain(gain: Gain) -> str:
    """"throughput +38.1% (95% interval +30.2% .. +46.0%)"; a lower-is-better metric shows its own change
    ("TTFT p95 -12.0% (...)"), so the numbers read the way the metric moved."""
    label = METRIC_LABELS.get(gain.metric, gain.metric)
    if gain.higher_is_better:
        estimate, low, high = gain.estimate, gain.low, gain.high
    else:
        estimate, low, high = -gain.estimate, -gain.high, -gain.low
    if gain.pairs == 1:
        return f"{label} {estimate:+.1%} (exact)"
    return f"{label} {estimate:+.1%} ({gain.confidence:.0%} interval {low:+.1%} .. {high:+.1%})"


def _quality_order(quality: dict[str, dict]) -> list[str]:
    return [m for m in QUALITY_METRICS if m in quality] + sorted(set(quality) - set(QUALITY_METRICS))


def _pct(fraction: float, sign: bool = False) -> str:
    """0.05 -> "5%", 0.025 -> "2.5%" (with sign: "+5%")."""
    value = round(fraction * 100, 6)
    return f"{value:+g}%" if sign else f"{value:g}%"


def _ms(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")
