"""The project's exceptions: one small hierarchy, each a one-line message for users."""

import os
import traceback


class PatientTwinError(Exception):
    """Base of every error the project raises on purpose; its message is shown as one line."""


class ConfigError(PatientTwinError):
    """A configuration value is missing or malformed."""


class InvalidMessage(PatientTwinError):
    """A message failed validation; the text is the reason kept in the dead-letter record, and
    `kind` its short machine-readable class (the dead-letter topic's and the metrics' label)."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.kind = kind


class BrokerError(PatientTwinError):
    """The embedded broker could not be started or reached."""


def where(exc: BaseException) -> str:
    """An unexpected exception as its type and where it was raised (`KeyError at process.py:42`),
    for logs: never its text, which may quote a patient's id or values."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return type(exc).__name__
    return f"{type(exc).__name__} at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}"
