"""Typed errors the engine raises for bad input and exhausted resources."""


class EngineError(Exception):
    """Base class of everything the engine raises on purpose."""


class InvalidRequest(EngineError, ValueError):
    """A request the engine cannot serve as given (bad sampling values, prompt too long, ...)."""


class ModelNotFound(EngineError, FileNotFoundError):
    """The model reference names nothing we can load."""


class UnsupportedModel(EngineError, ValueError):
    """The model exists but its architecture or format is not one we implement."""
