"""The transformers baselines of `llmctl bench`: plain `model.generate` on the same workload and dtype.

hf-sequential serves one request at a time; hf-static serves left-padded batches in arrival order, each batch
generating as many tokens as its longest request needs. Both ignore EOS (min_new_tokens = max_new_tokens) so
every request produces exactly its drawn output length, like the engine's ignore_eos.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig
from transformers.generation.streamers import BaseStreamer

from llmctl.agent.bench import Advance, BenchOptions, BenchRequest, RequestResult, RunResult, free_memory


class TimingStreamer(BaseStreamer):
    """Records when each decoding step's tokens reach the host (generate first puts the prompt)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter() - self.t0)

    def end(self) -> None:
        pass


def load_hf_model(folder: Path, dtype: str, device: str):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    return model.to(device).eval()


def generate(model, prompts: list[list[int]], new_tokens: int, pad_id: int, streamer: BaseStreamer) -> None:
    """Greedy generation of exactly `new_tokens` for every row of a left-padded batch."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    config = GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
        pad_token_id=pad_id, eos_token_id=model.generation_config.eos_token_id,
    )
    model.generate(
        input_ids=ids.to(model.device), attention_mask=mask.to(model.device), generation_config=config,
        streamer=streamer,
    )


def wait_for(t0: float, arrival_s: float) -> None:
    delay = t0 + arrival_s - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def run_hf_sequential(
    model, workload: list[BenchRequest], pad_id: int, warmup: list[list[int]], advance: Advance
) -> RunResult:
    generate(model, warmup[:1], 4, pad_id, TimingStreamer(time.perf_counter()))
    t0 = time.perf_counter()
    results = []
    for req in workload:
        wait_for(t0, req.arrival_s)
        streamer = TimingStreamer(t0)
        generate(model, [req.prompt_token_ids], req.output_len, pad_id, streamer)
        results.append(RequestResult(req.index, req.arrival_s, streamer.times[: req.output_len]))
        advance()
    return RunResult("hf-sequential", results, time.perf_counter() - t0)


def run_hf_static(
    model, workload: list[BenchRequest], batch_size: int, pad_id: int, warmup: list[list[int]],
    advance: Advance,
) -> RunResult:
    """A batch starts once its last member has arrived and the previous batch is done; its requests' clocks
    run from their own arrivals, so waiting for earlier batches counts in TTFT."""
    generate(model, warmup, 4, pad_id, TimingStreamer(time.perf_counter()))
    t0 = time.perf_counter()
    results = []
    wasted_output, padding = 0, 0
    for start in range(0, len(workload), batch_size):
        batch = workload[start:start + batch_size]
        wait_for(t0, max(r.arrival_s for r in batch))
        new_tokens = max(r.output_len for r in batch)
        streamer = TimingStreamer(t0)
        generate(model, [r.prompt_token_ids for r in batch], new_tokens, pad_id, streamer)
        width = max(len(r.prompt_token_ids) for r in batch)
        for req in batch:
            results.append(RequestResult(req.index, req.arrival_s, streamer.times[: req.output_len]))
            wasted_output += new_tokens - req.output_len
            padding += width - len(req.prompt_token_ids)
            advance()
    extra = {"batch_size": batch_size, "wasted_output_tokens": wasted_output, "padding_tokens": padding}
    return RunResult("hf-static", results, time.perf_counter() - t0, extra)


def run_baselines(
    folder: Path, dtype: str, config, options: BenchOptions, workload: list[BenchRequest],
    warmup: list[list[int]], tokenizer, advancer,
) -> list[RunResult]:
    """Load the model once at the engine's dtype and device, run each asked-for baseline, then free it."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = load_hf_model(folder, dtype, config.device)
    runs = []
    try:
        with torch.inference_mode():
            for name in options.baselines:
                if name == "hf-sequential":
                    runs.append(run_hf_sequential(model, workload, pad_id or 0, warmup, advancer(name)))
                elif name == "hf-static":
                    runs.append(run_hf_static(
                        model, workload, options.hf_batch_size, pad_id or 0, warmup, advancer(name)
                    ))
    finally:
        del model
        free_memory()
    return runs
