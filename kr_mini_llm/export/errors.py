"""The one error type of the exporters."""

from ..errors import KrMiniLlmError


class ExportError(KrMiniLlmError, ValueError):
    """A model, adapter or output path that cannot be exported; the message says what and how to fix it."""
