"""User-facing errors: each names the file, line, field or setting that is wrong."""


class PmpoError(Exception):
    """A mistake in the user's input or setup; the message says what and where, no traceback needed."""


class DataError(PmpoError):
    """The dataset is empty, malformed or lacks a required column."""


class ModelNotAvailableError(PmpoError):
    """A model spec cannot be resolved (offline, or no such directory)."""


class ContextLengthError(PmpoError):
    """An example does not fit in the model's context window."""


class RewriteParseError(PmpoError):
    """A rewriter reply holds no usable <prompt>...</prompt> block."""
