"""Engine flags of `llmctl serve | generate | eval` reach the EngineConfig, and bad values exit 2 in one line.
Nothing loads a model: the server and the engine are replaced by recorders."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import llmctl.agent.engine.engine as engine_module
import llmctl.agent.server as server_module
from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.errors import InvalidRequest
from llmctl.controlplane.cli import app

SPEC_FIELDS = ("speculative_method", "speculative_model", "num_speculative_tokens", "ngram_max", "ngram_min")
SPEC_FLAGS = ["--speculative-method", "ngram", "--num-speculative-tokens", "7", "--ngram-max", "3",
              "--ngram-min", "2"]


def spec(config: EngineConfig) -> tuple:
    return tuple(getattr(config, name) for name in SPEC_FIELDS)


@pytest.fixture
def served(monkeypatch) -> list[EngineConfig]:
    configs: list[EngineConfig] = []
    monkeypatch.setattr(server_module, "run_server", lambda config, **_: configs.append(config))
    return configs


class RecordingEngine:
    """Stands in for LLMEngine: records each config and has nothing to generate."""

    configs: list[EngineConfig] = []
    stop_at_second = False
    """Raise once two engines are built (eval's reference and candidate), before any scoring."""

    def __init__(self, config: EngineConfig) -> None:
        self.configs.append(config)
        if len(self.configs) == 2 and self.stop_at_second:
            raise InvalidRequest("recorded")

    def chat_prompt_ids(self, messages):
        return [1]

    def add_request(self, *args) -> None:
        pass

    def has_unfinished(self) -> bool:
        return False


@pytest.fixture
def engines(monkeypatch) -> list[EngineConfig]:
    monkeypatch.setattr(RecordingEngine, "configs", [])
    monkeypatch.setattr(engine_module, "LLMEngine", RecordingEngine)
    return RecordingEngine.configs


def test_speculative_flag_defaults_are_the_engine_configs(served):
    assert CliRunner().invoke(app, ["serve", "some-model"]).exit_code == 0
    defaults = EngineConfig(model="some-model")
    assert spec(served[0]) == spec(defaults) and served[0] == defaults


def test_serve_passes_the_speculative_flags(served):
    result = CliRunner().invoke(app, ["serve", "some-model", *SPEC_FLAGS])
    assert result.exit_code == 0, result.output
    assert spec(served[0]) == ("ngram", None, 7, 3, 2)
    draft = CliRunner().invoke(app, ["serve", "m", "--speculative-method", "draft", "--speculative-model", "d"])
    assert draft.exit_code == 0, draft.output
    assert spec(served[1])[:2] == ("draft", "d")


def test_generate_passes_the_speculative_flags(engines):
    result = CliRunner().invoke(app, ["generate", "some-model", "hi", "--speculative-method", "self-int4"])
    assert result.exit_code == 0, result.output
    assert engines[0].speculative_method == "self-int4"


def test_eval_gives_the_speculative_flags_to_the_candidate_only(engines, monkeypatch):
    monkeypatch.setattr(RecordingEngine, "stop_at_second", True)
    result = CliRunner().invoke(app, ["eval", "some-model", *SPEC_FLAGS])
    assert result.exit_code == 2 and "recorded" in result.output
    reference, candidate = engines
    assert spec(candidate) == ("ngram", None, 7, 3, 2)
    assert spec(reference) == spec(EngineConfig(model="some-model"))


@pytest.mark.parametrize(("flags", "message"), [
    (["--speculative-method", "medusa"], "speculative method must be one of none, ngram, draft, self-int4"),
    (["--speculative-method", "draft"], "--speculative-model names the draft of --speculative-method draft"),
    (["--speculative-model", "d"], "--speculative-model names the draft of --speculative-method draft"),
    (["--speculative-method", "ngram", "--num-speculative-tokens", "17"], "num_speculative_tokens must be in [1, 16]"),
    (["--speculative-method", "ngram", "--ngram-min", "0"], "need 1 <= ngram_min <= ngram_max"),
    (["--engine-config", "{}", "--speculative-method", "ngram"], "drop --speculative-method"),
])
def test_bad_speculative_flags_exit_2_in_one_line(served, flags, message):
    result = CliRunner().invoke(app, ["serve", "some-model", *flags])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert served == []


def test_speculation_travels_in_the_engine_config_json(served):
    config = EngineConfig(model="x", speculative_method="ngram", ngram_max=6)
    raw = json.dumps({k: v for k, v in config.to_dict().items() if k != "model"})
    result = CliRunner().invoke(app, ["serve", "some-model", "--engine-config", raw])
    assert result.exit_code == 0, result.output
    assert spec(served[0]) == ("ngram", None, 4, 6, 1)
