"""What speculative decoding did in one measured engine run of `llmctl bench`: target forwards per token and
the drafts' acceptance, from the engine's stats before and after the run (so warmup never counts)."""

from __future__ import annotations

from itertools import zip_longest
from typing import Any


def engine_run_extra(config, before, after) -> dict[str, Any]:
    """`forwards_per_token` for every engine run (1.0 without speculation); with speculation also the
    drafts verified, tokens drafted and accepted, in all and per draft position (vLLM's spec_decode series)."""
    generated = after.num_generation_tokens - before.num_generation_tokens
    forwards = after.num_seq_forwards - before.num_seq_forwards
    extra: dict[str, Any] = {"forwards_per_token": forwards / generated if generated else None}
    if not config.speculative:
        return extra
    drafts = after.spec_num_drafts - before.spec_num_drafts
    drafted = after.spec_num_draft_tokens - before.spec_num_draft_tokens
    accepted = after.spec_num_accepted_tokens - before.spec_num_accepted_tokens
    per_pos = [a - b for a, b in zip_longest(after.spec_accepted_per_pos, before.spec_accepted_per_pos, fillvalue=0)]
    extra.update(
        spec_num_drafts=drafts,
        spec_num_draft_tokens=drafted,
        spec_num_accepted_tokens=accepted,
        spec_acceptance_rate=accepted / drafted if drafted else None,
        # Tokens one verified draft step yields: the accepted drafts plus the target's own token.
        spec_mean_accepted_length=1.0 + accepted / drafts if drafts else 1.0,
        spec_accepted_per_pos=per_pos,
    )
    return extra


def speculation_line(run: dict[str, Any]) -> str | None:
    """One line under the tables for an engine run's summary; None for runs that are not the engine's."""
    if "forwards_per_token" not in run:
        return None
    fpt = run["forwards_per_token"]
    line = f"{run['name']}: {'-' if fpt is None else f'{fpt:.2f}'} target forwards per token"
    if "spec_num_drafts" not in run:
        return line
    drafts, rate = run["spec_num_drafts"], run["spec_acceptance_rate"]
    if not drafts or rate is None:
        return f"{line}; no drafts verified"
    per_pos = " ".join(f"{n / drafts:.0%}" for n in run["spec_accepted_per_pos"])
    return (f"{line}; drafts {drafts}, accepted {rate:.0%} (per position {per_pos}), "
            f"mean accepted length {run['spec_mean_accepted_length']:.1f}")
