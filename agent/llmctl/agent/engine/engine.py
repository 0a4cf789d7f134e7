"""LLMEngine: the step loop — schedule -> run model -> sample -> update. The API is in docs/engine-api.md."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import torch

from llmctl.agent.engine import kv_pool
from llmctl.agent.engine.config import PINNED_ENV, EngineConfig
from llmctl.agent.engine.detokenizer import IncrementalDetokenizer
from llmctl.agent.engine.errors import InvalidRequest
from llmctl.agent.engine.kv_cache import BlockManager
from llmctl.agent.engine.model_runner import ModelRunner
from llmctl.agent.engine.sampler import Sampler, SampleResult, seeded_generator
from llmctl.agent.engine.sampling import SamplingParams
from llmctl.agent.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from llmctl.agent.engine.sequence import CompletionOutput, RequestOutput, Sequence, TokenLogprob

DEFAULT_CPU_KV_BYTES = 1 << 30
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """auto: bfloat16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with
    AVX512-BF16 or AMX); float16 on older GPUs; float32 on older CPUs, where emulated bf16 is slower."""
    if name != "auto":
        return TORCH_DTYPES[name]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


@dataclass(frozen=True)
class EngineInfo:
    """Facts decided at start-up (not part of the user's config)."""

    model_name: str
    model_path: str
    max_model_len: int
    block_size: int
    num_kv_blocks: int
    kv_bytes_per_token: int
    dtype: str
    kv_cache_dtype: str
    eos_token_ids: frozenset[int]
    vocab_size: int
    quantization: str | None = None
    """How the decoder linears are stored: int8 | awq | rtn4 (with the group size), None for float."""
    linear_weight_bytes: int = 0
    """Bytes of the decoder linears' weights, scales and zeros."""
    model_bytes: int = 0
    """Bytes of every parameter and buffer the model holds."""
    linear_params: int = 0
    """Weights in the decoder linears; x 2 = their fp16 bytes."""


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    num_kv_blocks: int
    num_used_blocks: int
    kv_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    num_prompt_tokens: int
    num_generation_tokens: int
    num_prefilled_tokens: int
    kv_waste: float
    peak_used_blocks: int
    peak_kv_waste: float
    kv_bytes_per_token: int = 0
    linear_weight_bytes: int = 0
    model_bytes: int = 0
    kv_cache_bytes: int = 0
    """Bytes of the whole KV pool (every block, scales included)."""
    num_seq_forwards: int = 0
    """Target forwards summed over the sequences that generated a token in them."""
    spec_num_drafts: int = 0
    """Sequence-steps that verified at least one drafted token."""
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0
    spec_accepted_per_pos: tuple[int, ...] = ()


def load_quantized(config: EngineConfig, folder, hf_config, tokenizer, dtype: torch.dtype):
    """Build the model as the checkpoint stores it, then quantize at load if the config asks.

    Returns the unfinalized model and the QuantSpec its linears use (None: float).
    """
    from llmctl.agent.engine import loader
    from llmctl.agent.engine.models.llama import build_model
    from llmctl.agent.engine.quantization import (
        calibration,
        checkpoint_spec,
        linear_factory,
        quantize_model,
        resolve_spec,
    )

    stored = checkpoint_spec(hf_config)
    if stored is not None and config.quantization not in (None, stored.method):
        raise InvalidRequest(
            f"{folder} is already quantized ({stored.method}); drop --quantization or use a float checkpoint"
        )
    make = None if stored is None else linear_factory(stored)
    if stored is not None or config.quantization is None:
        return build_model(hf_config, loader.load_state_dict(folder, dtype), dtype, config.device, make), stored
    spec = resolve_spec(config.quantization, config.quantization_group_size, hf_config)
    # Calibrate, fold and round in float32 (bf16 folding would add its own rounding to the 4-bit error),
    # then bring what stays float (embeddings, norms, biases) to the serving dtype.
    model = build_model(hf_config, loader.load_state_dict(folder, torch.float32), torch.float32, config.device)
    acts = None
    if spec.method == "awq":
        text = calibration.read_text(calibration.DEFAULT_CALIBRATION)
        windows = calibration.token_windows(tokenizer, text, calibration.DEFAULT_SAMPLES, calibration.DEFAULT_SEQ_LEN)
        acts = calibration.collect_activations(model, windows, block_size=config.block_size, device=config.device)
    quantize_model(model, spec, acts)
    for param in model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(dtype)
    return model, spec


DRAFT_METHODS = ("draft", "self-int4")


class LLMEngine:
    def __init__(self, config: EngineConfig):
        from llmctl.agent.engine import loader
        from llmctl.agent.engine.models.linear import linear_params, linear_weight_bytes, parameter_bytes
        from llmctl.agent.engine.models.llama import finalize

        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        dtype = resolve_dtype(config.dtype, config.device)
        folder = loader.resolve_model(config.model)
        hf_config = loader.load_model_config(folder)
        self.tokenizer = loader.load_tokenizer(folder)
        model, spec = load_quantized(config, folder, hf_config, self.tokenizer, dtype)
        fp8_scales = None
        if config.kv_cache_dtype == "fp8":
            from llmctl.agent.engine.quantization import calibration, kv

            windows = calibration.token_windows(
                self.tokenizer, calibration.read_text(calibration.DEFAULT_CALIBRATION), 4, 256
            )
            fp8_scales = kv.calibrate_fp8_scales(model, windows, block_size=config.block_size, device=config.device)
        finalize(model)
        draft = None
        if config.speculative_method in DRAFT_METHODS:
            from llmctl.agent.engine.draft_model import load_draft

            draft = load_draft(config, self.tokenizer, hf_config, dtype)

        model_max = getattr(hf_config, "max_position_embeddings", None) or 2048
        max_model_len = min(config.max_model_len or model_max, model_max)
        kv_dtype = kv_pool.pool_dtype(config.kv_cache_dtype, dtype)
        kv_per_token = kv_pool.kv_bytes_per_token(model.num_layers, model.num_kv_heads, model.head_dim, kv_dtype)
        if draft is not None:
            # The draft's pool mirrors the target's blocks (draft_model.py): a token costs both.
            kv_per_token += kv_pool.kv_bytes_per_token(draft.num_layers, draft.num_kv_heads, draft.head_dim, dtype)
        if config.num_kv_blocks is not None:
            num_blocks = config.num_kv_blocks
        else:
            budget = config.kv_cache_memory or DEFAULT_CPU_KV_BYTES
            num_blocks = budget // (kv_per_token * config.block_size)
            if config.kv_cache_memory is None:
                # No need to reserve more than every sequence at full context.
                num_blocks = min(num_blocks, config.max_num_seqs * -(-max_model_len // config.block_size))
            if num_blocks < 1:
                raise InvalidRequest(
                    f"--kv-cache-memory {budget} bytes holds no block of {config.block_size} tokens "
                    f"({kv_per_token * config.block_size} bytes each)"
                )
        self.info = EngineInfo(
            model_name=config.served_model_name or config.model,
            model_path=str(folder),
            max_model_len=max_model_len,
            block_size=config.block_size,
            num_kv_blocks=num_blocks,
            kv_bytes_per_token=kv_per_token,
            dtype=str(dtype).removeprefix("torch."),
            kv_cache_dtype=str(kv_dtype).removeprefix("torch."),
            eos_token_ids=frozenset(self._eos_ids(hf_config)),
            vocab_size=hf_config.vocab_size,
            quantization=None if spec is None else (
                spec.method if spec.group_size is None else f"{spec.method}-g{spec.group_size}"
            ),
            linear_weight_bytes=linear_weight_bytes(model),
            model_bytes=parameter_bytes(model),
            linear_params=linear_params(model),
        )
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, config.enable_chunked_prefill),
            self.block_manager,
        )
        self.runner = ModelRunner(model, num_blocks, config.block_size, kv_dtype, config.device, fp8_scales)
        self.sampler = Sampler()
        self.requests: dict[str, Sequence] = {}
        self._counters = {"prompt": 0, "generation": 0, "prefilled": 0, "seq_forwards": 0}
        self._peak = (0, 0.0)
        self.logits_observer = None
        """Optional callable(request_ids, logits [rows, vocab]) seeing every step's logits (tests, evaluation); a
        request verifying drafted tokens has one row per draft and one more."""
        self.speculator = None
        if config.speculative:
            from llmctl.agent.engine.speculative import make_speculator

            self.speculator = make_speculator(config, draft, self.runner, dtype)

    def score(self, token_lists: list[list[int]]) -> list[torch.Tensor]:
        """Float32 next-token logits [len, vocab] at every position of each token list, through this
        engine's weights and KV cache format (a scratch pool: serving state is untouched)."""
        for tokens in token_lists:
            if len(tokens) > self.info.max_model_len:
                raise InvalidRequest(f"{len(tokens)} tokens exceed the context limit {self.info.max_model_len}")
        return self.runner.score(token_lists)

    def prompt_logprobs(self, token_ids: list[int], num_top: int) -> list[TokenLogprob]:
        """Each token after the first: its logprob given the tokens before it, with the num_top most
        likely tokens at its position; from one score() forward (what completions' echo reports)."""
        if not 0 <= num_top <= self.info.vocab_size:
            raise InvalidRequest(f"logprobs must be in [0, {self.info.vocab_size}], got {num_top}")
        if len(token_ids) < 2:
            return []  # the first token has no context to score it in
        logits = self.score([token_ids])[0][:-1]  # [len - 1, vocab]: row i predicts token i + 1
        lse = logits.logsumexp(-1, keepdim=True)  # log_softmax without a second [len - 1, vocab] tensor
        targets = torch.tensor(token_ids[1:], device=logits.device)[:, None]
        chosen = (logits.gather(1, targets) - lse)[:, 0].tolist()
        top_values, top_ids = logits.topk(num_top, dim=-1)
        top_values, top_ids = (top_values - lse).tolist(), top_ids.tolist()
        token_str = functools.cache(self._token_str)  # prompts repeat tokens; decoding is per call
        return [
            TokenLogprob(t, token_str(t), lp, [(i, token_str(i), v) for i, v in zip(ids, vals, strict=True)])
            for t, lp, ids, vals in zip(token_ids[1:], chosen, top_ids, top_values, strict=True)
        ]

    def _eos_ids(self, hf_config) -> set[int]:
        ids = set()
        for source in (getattr(hf_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return ids

    # -- requests ---------------------------------------------------------------------------
    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.info.vocab_size]
            if bad:
                raise InvalidRequest(f"token ids out of range [0, {self.info.vocab_size}): {bad[:5]}")
        if not ids:
            raise InvalidRequest("the prompt is empty")
        return ids

    def chat_prompt_ids(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        if not self.tokenizer.chat_template:
            raise InvalidRequest(f"model {self.info.model_name} has no chat template; use completions")
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                      tokenize=False)
        except Exception as exc:  # template errors are the caller's malformed messages
            raise InvalidRequest(f"could not apply the chat template: {exc}") from exc
        return self.tokenizer.encode(text, add_special_tokens=False)

    def validate(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        """Tokenize and check a request against the engine's limits. Safe from any thread."""
        ids = self.tokenize(prompt)
        limit = self.info.max_model_len
        if len(ids) + params.max_tokens > limit:
            raise InvalidRequest(
                f"this model's maximum context length is {limit} tokens, but the request has "
                f"{len(ids)} prompt tokens and max_tokens {params.max_tokens} ({len(ids) + params.max_tokens} "
                f"in total); shorten the prompt or lower max_tokens"
            )
        need = self.block_manager.blocks_needed(len(ids) + params.max_tokens)
        if need > self.info.num_kv_blocks:
            raise InvalidRequest(
                f"the request needs {need} KV blocks but the pool holds {self.info.num_kv_blocks}; "
                f"raise --kv-cache-memory / --num-kv-blocks or lower max_tokens"
            )
        if not self.config.enable_chunked_prefill and len(ids) > self.config.max_num_batched_tokens:
            raise InvalidRequest(
                f"prompt of {len(ids)} tokens exceeds --max-num-batched-tokens "
                f"{self.config.max_num_batched_tokens} with chunked prefill off"
            )
        return ids

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> None:
        if request_id in self.requests:
            raise InvalidRequest(f"request id {request_id!r} is already in use")
        ids = self.validate(prompt, params)
        seq = Sequence(request_id, ids, params, eos_token_ids=self.info.eos_token_ids)
        seq.detokenizer = IncrementalDetokenizer(self.tokenizer, ids)
        self.requests[request_id] = seq
        self.scheduler.add(seq)
        self._counters["prompt"] += len(ids)

    def abort(self, request_id: str) -> None:
        seq = self.requests.pop(request_id, None)
        if seq is not None:
            seq.finish_reason = "abort"
            self.scheduler.finish(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- the loop ---------------------------------------------------------------------------
    def adopt_cpu_affinity(self) -> None:
        """In a replica the agent pins to a core set (LLMCTL_CPU_PINNED=1, see agent/cpu_slots.py), run as
        many torch threads as the set has cores, capped by num_threads: the agent moves the set as replicas
        come and go, and more threads than cores thrash. Called by the loop thread between steps."""
        if self.config.device != "cpu" or os.environ.get(PINNED_ENV) != "1" or not hasattr(os, "sched_getaffinity"):
            return
        cores = len(os.sched_getaffinity(0))
        want = min(cores, self.config.num_threads) if self.config.num_threads else cores
        if want != torch.get_num_threads():
            torch.set_num_threads(want)

    def step(self) -> list[RequestOutput]:
        if self.speculator is not None:
            self.speculator.plan(self.scheduler.running, self.info.max_model_len)
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return []
        if self.speculator is not None:
            self.speculator.fill(batch.seqs, self.sampler.generator)
        self._track_kv(batch)
        started = time.perf_counter()
        logits, samplers = self.runner.execute(batch)
        if self.logits_observer is not None:
            self.logits_observer([s.request_id for s in samplers for _ in range(1 + len(s.draft_token_ids))], logits)
        if self.speculator is not None and all(
            n == 1 + len(s.draft_token_ids) for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)
        ):
            # Decoding and verifying steps only: a prefill's cost per token is another line altogether.
            self.speculator.observe_step(batch.num_tokens, time.perf_counter() - started)
        results = self._sample(logits, samplers)
        return self._update(batch, samplers, results)

    def _sample(self, logits: torch.Tensor, samplers: list[Sequence]) -> list[SampleResult]:
        """Per sampling sequence: the tokens it emits this step (one, or with drafts the accepted ones and one
        of the target's) and their logprobs."""
        self._counters["seq_forwards"] += len(samplers)
        if self.speculator is not None:
            if any(s.draft_token_ids for s in samplers):
                return self.speculator.verify(logits, samplers, self.sampler)
        generators = [None if s.params.seed is None else seeded_generator(s.params.seed, s.num_tokens) for s in samplers]
        result = self.sampler(logits, [s.params for s in samplers], generators)
        return [SampleResult([t], [lp]) for t, lp in zip(result.token_ids, result.logprobs, strict=True)]

    def _track_kv(self, batch: ScheduledBatch) -> None:
        used = self.block_manager.num_used_blocks
        if used >= self._peak[0]:
            self._peak = (used, self._kv_waste(batch))

    def _kv_waste(self, batch: ScheduledBatch | None = None) -> float:
        """Allocated-but-unused slots / allocated slots. Shared blocks are full, so only tails are slack."""
        used = self.block_manager.num_used_blocks
        if not used:
            return 0.0
        new = {id(s): n for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)} if batch else {}
        bs = self.block_manager.block_size
        slack = sum(
            len(s.block_table) * bs - (s.num_computed_tokens + new.get(id(s), 0)) for s in self.scheduler.running
        )
        return slack / (used * bs)

    def _update(self, batch: ScheduledBatch, samplers: list[Sequence], results: list[SampleResult]
                ) -> list[RequestOutput]:
        now = time.monotonic()
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            start = seq.num_computed_tokens
            self._counters["prefilled"] += max(0, min(start + n, seq.num_prompt_tokens) - start)
            seq.num_computed_tokens += n - len(seq.draft_token_ids)  # drafted tokens count once accepted
        outputs = []
        for seq, result in zip(samplers, results, strict=True):
            if seq.draft_token_ids:
                seq.num_computed_tokens += len(result.token_ids) - 1
                seq.draft_token_ids = []
                self.block_manager.trim(seq)
            if seq.first_token_time is None:
                seq.first_token_time = now
            for token, logprob in zip(result.token_ids, result.logprobs, strict=True):
                seq.output_token_ids.append(token)
                self._counters["generation"] += 1
                if logprob is not None:
                    lp, alts = logprob
                    seq.logprobs.append(TokenLogprob(
                        token, self._token_str(token), lp, [(t, self._token_str(t), v) for t, v in alts]
                    ))
                self._check_stop(seq, token)
                if seq.finish_reason is not None:
                    break
            if seq.finish_reason is not None:
                seq.finish_time = now
                self.scheduler.finish(seq)
                self.requests.pop(seq.request_id, None)
            outputs.append(self._output(seq))
        return outputs

    def _token_str(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _check_stop(self, seq: Sequence, token: int) -> None:
        p = seq.params
        if (token in seq.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            seq.text += seq.detokenizer.flush()
            seq.finish_reason = "stop"
            return
        prev_len = len(seq.text)
        seq.text += seq.detokenizer.add(token)
        if p.stop and len(seq.text) > prev_len:
            # A stop string may begin in earlier text and end in this delta.
            window = max(0, prev_len - max(map(len, p.stop)) + 1)
            hits = [(seq.text.find(s, window), s) for s in p.stop]
            hits = [(i, s) for i, s in hits if i >= 0]
            if hits:
                i, s = min(hits)
                seq.text = seq.text[: i + len(s)] if p.include_stop_str_in_output else seq.text[:i]
                seq.finish_reason = "stop"
                return
        if len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= self.info.max_model_len:
            seq.text += seq.detokenizer.flush()
            seq.finish_reason = "length"

    def _output(self, seq: Sequence) -> RequestOutput:
        finished = seq.finish_reason is not None
        visible = seq.text
        if not finished and seq.params.stop:
            # Hold back what could be the start of a stop string.
            visible = visible[: max(seq.num_sent_chars, len(visible) - max(map(len, seq.params.stop)) + 1)]
        delta_text = visible[seq.num_sent_chars :]
        delta_ids = seq.output_token_ids[seq.num_sent_tokens :]
        logprobs = seq.logprobs[seq.num_sent_tokens :] if seq.params.logprobs is not None else None
        seq.num_sent_chars = len(visible)
        seq.num_sent_tokens = len(seq.output_token_ids)
        completion = CompletionOutput(
            text=visible,
            token_ids=list(seq.output_token_ids),
            delta_text=delta_text,
            delta_token_ids=delta_ids,
            logprobs=logprobs,
            finish_reason=seq.finish_reason,
        )
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_token_ids,
            outputs=[completion],
            finished=finished,
            num_cached_tokens=seq.num_cached_tokens,
            arrival_time=seq.arrival_time,
            first_token_time=seq.first_token_time,
            finish_time=seq.finish_time,
        )

    # -- conveniences -----------------------------------------------------------------------
    def generate(
        self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[RequestOutput]:
        """Run prompts to completion; returns final outputs in prompt order (text and ids complete)."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"gen-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        for rid, prompt, p in zip(ids, prompts, plist, strict=True):
            self.add_request(rid, prompt, p)
        final: dict[str, RequestOutput] = {}
        logprobs: dict[str, list] = {rid: [] for rid in ids}
        while self.has_unfinished():
            for out in self.step():
                if out.output.logprobs:
                    logprobs.setdefault(out.request_id, []).extend(out.output.logprobs)
                if out.finished:
                    final[out.request_id] = out
        for rid, out in final.items():
            if out.output.logprobs is not None:
                out.output.logprobs = logprobs[rid]  # the whole request's, not just the last delta
        return [final[rid] for rid in ids]

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_kv_blocks=bm.num_blocks,
            num_used_blocks=bm.num_used_blocks,
            kv_usage=bm.usage,
            prefix_cache_queries=bm.counters.queries,
            prefix_cache_hits=bm.counters.hits,
            num_preemptions=self.scheduler.num_preemptions,
            num_prompt_tokens=self._counters["prompt"],
            num_generation_tokens=self._counters["generation"],
            num_prefilled_tokens=self._counters["prefilled"],
            kv_waste=self._kv_waste(),
            peak_used_blocks=self._peak[0],
            peak_kv_waste=self._peak[1],
            kv_bytes_per_token=self.info.kv_bytes_per_token,
            linear_weight_bytes=self.info.linear_weight_bytes,
            model_bytes=self.info.model_bytes,
            kv_cache_bytes=bm.num_blocks * self.info.block_size * self.info.kv_bytes_per_token,
            num_seq_forwards=self._counters["seq_forwards"],
            **self._spec_stats(),
        )

    def _spec_stats(self) -> dict:
        if self.speculator is None:
            return {}
        c = self.speculator.counters
        return {"spec_num_drafts": c.num_drafts, "spec_num_draft_tokens": c.num_draft_tokens,
                "spec_num_accepted_tokens": c.num_accepted_tokens, "spec_accepted_per_pos": tuple(c.accepted_per_pos)}
