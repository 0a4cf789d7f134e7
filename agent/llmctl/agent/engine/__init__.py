"""llmctl's inference engine. Imports torch, transformers, safetensors and gguf only."""

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.errors import EngineError, InvalidRequest, ModelNotFound, UnsupportedModel
from llmctl.agent.engine.sampling import SamplingParams
from llmctl.agent.engine.sequence import CompletionOutput, RequestOutput

__all__ = [
    "CompletionOutput",
    "EngineConfig",
    "EngineError",
    "InvalidRequest",
    "ModelNotFound",
    "RequestOutput",
    "SamplingParams",
    "UnsupportedModel",
]
