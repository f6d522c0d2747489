"""The project's exceptions: one small hierarchy, each a one-line message for users."""


class PatientTwinError(Exception):
    """Base of every error the project raises on purpose; its message is shown as one line."""


class ConfigError(PatientTwinError):
    """A configuration value is missing or malformed."""


class InvalidMessage(PatientTwinError):
    """A message failed validation; the text is the reason kept in the dead-letter record."""


class BrokerError(PatientTwinError):
    """The embedded broker could not be started or reached."""
