"""The deploy form's checks, the engine's own EngineConfig behind them: what an operator types wrong is
named in one line, and a new revision keeps the keys the form does not show."""

from __future__ import annotations

import pytest

from llmctl.tui.dialogs.deploy_form import FormError, build_spec

DEFAULTS = {"max_num_seqs": "64", "max_num_batched_tokens": "2048", "max_model_len": "", "num_kv_blocks": "",
            "kv_cache_memory": "", "num_threads": "", "dtype": "auto", "kv_cache_dtype": "auto",
            "quantization": "none", "quantization_group_size": "auto", "block_size": 16, "enable_prefix_caching": True,
            "enable_chunked_prefill": True}


@pytest.mark.parametrize(
    ("name", "model", "replicas", "changes", "error"),
    [
        ("Chat", "tiny", "", {}, "invalid deployment name 'Chat'"),
        ("chat", "  ", "", {}, "model is required"),
        ("chat", "tiny", "two", {}, "replicas must be a whole number, got 'two'"),
        ("chat", "tiny", "-1", {}, "replicas must be >= 0"),
        ("chat", "tiny", "", {"max_num_seqs": "8.5"}, "max_num_seqs must be a whole number, got '8.5'"),
        ("chat", "tiny", "", {"max_num_batched_tokens": ""}, "max_num_batched_tokens is required"),
        ("chat", "tiny", "", {"max_num_seqs": "0"}, "invalid engine config: max_num_seqs must be >= 1"),
        ("chat", "tiny", "", {"num_kv_blocks": "-4"}, "invalid engine config: num_kv_blocks must be >= 1"),
    ],
)
def test_bad_input_is_named_and_nothing_is_built(name: str, model: str, replicas: str, changes: dict,
                                                  error: str) -> None:
    with pytest.raises(FormError, match=error.replace("(", r"\(").replace(".", r"\.")):
        build_spec(name, model, replicas, {**DEFAULTS, **changes})


def test_a_good_form_becomes_the_whole_recipe() -> None:
    spec = build_spec(" chat ", " tiny ", "3", {**DEFAULTS, "max_num_seqs": "8", "kv_cache_dtype": "int8",
                                               "quantization": "awq", "quantization_group_size": 64,
                                               "kv_cache_memory": "1_000_000"})
    assert (spec.name, spec.model, spec.replicas) == ("chat", "tiny", 3)
    config = spec.engine_config
    assert config["max_num_seqs"] == 8 and config["kv_cache_dtype"] == "int8" and config["quantization"] == "awq"
    assert config["kv_cache_memory"] == 1_000_000 and config["max_model_len"] is None
    assert config["quantization_group_size"] == 64
    assert build_spec("chat", "tiny", "", DEFAULTS).engine_config["quantization_group_size"] is None
    assert "model" not in config and build_spec("chat", "tiny", "", DEFAULTS).replicas is None


def test_a_new_revision_keeps_what_the_form_does_not_show() -> None:
    base = {"model": "tiny", "device": "cuda", "served_model_name": "chat", "max_num_seqs": 4}
    spec = build_spec("chat", "other-model", "", {**DEFAULTS, "quantization": "awq"}, base)
    assert spec.engine_config["device"] == "cuda" and spec.engine_config["served_model_name"] == "chat"
    assert spec.engine_config["max_num_seqs"] == 64  # the form's value, not the base's
    with pytest.raises(FormError, match="unknown engine config keys: turbo"):
        build_spec("chat", "tiny", "", DEFAULTS, {**base, "turbo": True})
