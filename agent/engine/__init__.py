"""llmctl's inference engine. Imports torch, transformers, safetensors and gguf only."""

from agent.engine.config import EngineConfig
from agent.engine.errors import EngineError, InvalidRequest, ModelNotFound, UnsupportedModel
from agent.engine.sampling import SamplingParams
from agent.engine.sequence import CompletionOutput, RequestOutput

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
