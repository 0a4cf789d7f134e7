"""The quality harness: perplexity, KL / top-1 agreement against a reference, multiple-choice accuracy."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.errors import InvalidRequest
from llmctl.agent.engine.evaluation import (
    DEFAULT_MC,
    EvalOptions,
    MCItem,
    _score_items,
    evaluate,
    load_mc_items,
)

KEYS = {"linear_weight_bytes", "kv_bytes_per_token", "perplexity", "kl_divergence", "top1_agreement", "accuracy"}


def engine(model, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model), dtype="float32", num_kv_blocks=128, **kw))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    (d / "corpus.txt").write_text("The quick brown fox jumps over the lazy dog. " * 30)
    items = [
        {"id": f"t{i}", "category": "arithmetic", "question": f"What is {i} + 1?",
         "choices": [str(i + 1), str(i + 2), str(i + 3)], "answer": i % 3}
        for i in range(6)
    ]
    (d / "mc.jsonl").write_text("\n".join(json.dumps(x) for x in items) + "\n")
    return d


@pytest.fixture(scope="module")
def reference(tiny_llama):
    return engine(tiny_llama)


def test_the_reference_against_itself_has_zero_kl_and_full_agreement(tiny_llama, reference, files):
    same = engine(tiny_llama)
    out = evaluate(same, reference, EvalOptions(corpus=files / "corpus.txt", mc=files / "mc.jsonl", context_len=64))
    c, r = out["candidate"], out["reference"]
    assert c.kl_divergence == pytest.approx(0, abs=1e-6) and c.top1_agreement == 1.0
    assert c.perplexity == pytest.approx(r.perplexity, rel=1e-6) and c.accuracy == r.accuracy
    assert r.kl_divergence == 0 and r.top1_agreement == 1
    assert c.num_tokens > 100 and c.num_items == 6
    assert c.item_correct == r.item_correct and len(c.item_correct) == 6  # per item, for the judge's pairing
    assert sum(c.item_correct) / 6 == pytest.approx(c.accuracy)
    assert KEYS <= set(c.to_dict())


def test_perplexity_is_the_exponential_of_the_mean_token_nll(reference, files):
    out = evaluate(reference, reference, EvalOptions(corpus=files / "corpus.txt", mc=None, context_len=64,
                                                    max_tokens=64))
    tokens = reference.tokenize("The quick brown fox jumps over the lazy dog. " * 30)[:64]
    logp = torch.log_softmax(reference.score([tokens])[0][:-1], -1)
    nll = -logp.gather(1, torch.tensor(tokens[1:])[:, None]).mean().item()
    assert out["reference"].perplexity == pytest.approx(math.exp(nll), rel=1e-5)
    assert out["reference"].accuracy is None


def test_int8_candidate_moves_the_distribution_a_little(tiny_llama, reference, files):
    out = evaluate(engine(tiny_llama, quantization="int8", kv_cache_dtype="int8"), reference,
                   EvalOptions(corpus=files / "corpus.txt", mc=None, context_len=64))
    c, r = out["candidate"], out["reference"]
    assert 0 < c.kl_divergence < 0.05 and c.top1_agreement > 0.8
    assert c.linear_weight_bytes < 0.3 * r.linear_weight_bytes  # fp32 reference: 4 bytes -> ~1
    # head_dim 16: 16 int8 codes + a float32 scale per (token, head) against 16 float32 values.
    assert c.kv_bytes_per_token * 64 == r.kv_bytes_per_token * 20
    assert c.quantization == "int8" and c.kv_cache_dtype == "int8"
    assert r.linear_bytes_vs_fp16 == 2.0 and 0.5 < c.linear_bytes_vs_fp16 < 0.6  # 64-wide rows: +4/64 scales


def test_multiple_choice_picks_the_highest_mean_log_probability(reference):
    item = MCItem("x", "general_knowledge", "What colour is the sky?", ("blue", "green apples", "red"), 0)
    prompt = reference.tokenize("Question: What colour is the sky?\nAnswer:")
    means = []
    for choice in item.choices:
        ans = reference.tokenize(f" {choice}")
        logits = reference.score([prompt + ans])[0]
        logp = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
        means.append(logp.gather(1, torch.tensor(ans)[:, None]).mean().item())
    best = max(range(3), key=means.__getitem__)
    for answer in range(3):
        verdict = _score_items(reference, reference.tokenizer, [MCItem("x", "g", item.question, item.choices, answer)])
        assert verdict == [answer == best]


def test_the_default_multiple_choice_set_is_large_balanced_and_valid():
    items = load_mc_items(DEFAULT_MC)
    assert len(items) >= 150
    cats = Counter(i.category for i in items)
    assert set(cats) == {"general_knowledge", "arithmetic", "reading_comprehension"} and min(cats.values()) >= 40
    answers = Counter(i.answer for i in items)
    assert min(answers.values()) >= len(items) // 4 - 10, "the answer position must not give it away"
    for i in items:
        if i.category == "arithmetic" and "+" in i.question:
            a, b = (int(t) for t in i.question.split("What is ")[1].rstrip("?").split(" + "))
            assert i.choices[i.answer] == str(a + b), i.id


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "expected"),
        ('{"id": "a", "question": "q", "choices": ["x"], "answer": 0}', ">= 2 choices"),
        ('{"id": "a", "question": "q", "choices": ["x", "y"], "answer": 2}', "answer index"),
        ('{"id": "a", "question": "q", "choices": ["x", "y"]}', "expected"),
    ],
)
def test_malformed_multiple_choice_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "mc.jsonl"
    path.write_text('{"id": "ok", "question": "q", "choices": ["x", "y"], "answer": 1}\n' + line + "\n")
    with pytest.raises(InvalidRequest, match=message) as exc:
        load_mc_items(path)
    assert "mc.jsonl:2" in str(exc.value)


def test_eval_cli_prints_a_table_and_writes_both_sides_as_json(tiny_llama, files, tmp_path):
    from typer.testing import CliRunner

    from llmctl.controlplane.cli import app

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, [
        "eval", str(tiny_llama), "--quantization", "rtn4", "--kv-cache-dtype", "fp8", "--corpus",
        str(files / "corpus.txt"), "--mc", str(files / "mc.jsonl"), "--context-len", "64", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "top-1 agreement" in result.output
    data = json.loads(out.read_text())
    assert set(data) == {"candidate", "reference"}
    assert KEYS <= set(data["candidate"]) and KEYS <= set(data["reference"])
    assert data["reference"]["kl_divergence"] == 0 and data["reference"]["top1_agreement"] == 1
    assert data["candidate"]["kl_divergence"] > 0
    missing = CliRunner().invoke(app, ["eval", str(tiny_llama), "--corpus", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_eval_cli_takes_whole_engine_configs_and_scores_only_the_first_mc_items(tiny_llama, files, tmp_path):
    from typer.testing import CliRunner

    from llmctl.controlplane.cli import app

    out = tmp_path / "eval.json"
    config = {"dtype": "float32", "num_kv_blocks": 32}
    result = CliRunner().invoke(app, [
        "eval", str(tiny_llama), "--engine-config", json.dumps({**config, "kv_cache_dtype": "int8"}),
        "--reference-engine-config", json.dumps(config), "--corpus", str(files / "corpus.txt"),
        "--mc", str(files / "mc.jsonl"), "--mc-limit", "2", "--context-len", "64", "--max-tokens", "128",
        "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["candidate"]["kv_cache_dtype"] == "int8" and data["reference"]["kv_cache_dtype"] == "float32"
    assert data["candidate"]["num_items"] == 2 and data["candidate"]["kl_divergence"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--engine-config", "{bad"], "error: --engine-config is not valid JSON"),
    (["--reference-engine-config", "[1]"], "error: --reference-engine-config must be a JSON object"),
    (["--engine-config", '{"kv_cache_dtype": "int8"}', "--kv-cache-dtype", "fp8"],
     "error: --engine-config replaces the engine flags; drop --kv-cache-dtype"),
    (["--engine-config", "{}", "--reference-engine-config", "{}", "--dtype", "float32"],
     "error: --engine-config replaces the engine flags; drop --dtype"),
    (["--engine-config", '{"no_such_knob": 1}'], "error: --engine-config: unknown engine config keys: no_such_knob"),
])
def test_eval_cli_refuses_a_bad_engine_config_in_one_line(tiny_llama, args, message):
    from typer.testing import CliRunner

    from llmctl.controlplane.cli import app

    result = CliRunner().invoke(app, ["eval", str(tiny_llama), *args])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(message), line
