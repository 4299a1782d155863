"""User-facing errors.

Anything a user can fix (a bad path, an empty corpus, a wrong vocab size) raises an
``HfsslError``; recipes turn it into one actionable line instead of a traceback.
"""


class HfsslError(Exception):
    """An error caused by user input, reported as a single actionable line."""


class DataError(HfsslError):
    """Missing, empty or malformed input data."""


class ConfigError(HfsslError):
    """Inconsistent flags or configuration."""
