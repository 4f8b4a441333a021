"""Domain errors. The engine raises these; the CLI and server turn them into one-line messages."""


class LocalspecError(Exception):
    """Base class for every error localspec reports to a user."""


class ModelFileError(LocalspecError):
    """The model file is missing, is not a GGUF, is truncated or cannot be loaded."""


class UnsupportedModelError(LocalspecError):
    """The model's architecture or tokenizer is not supported."""


class InvalidSettingsError(LocalspecError, ValueError):
    """A sampling, generation or backend setting is out of range."""


class InvalidTextError(InvalidSettingsError, UnicodeError):
    """Text that is not Unicode (a lone surrogate from JSON), so it has no UTF-8 for the model."""


class ContextOverflowError(LocalspecError):
    """The prompt (plus what must be generated) does not fit in the context window."""


class BackendError(LocalspecError):
    """The backend failed while decoding."""
