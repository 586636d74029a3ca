"""The one exception type for bad data, so callers (CLI, app, tests) tell it from bugs."""


class DataError(ValueError):
    """Raised for input that cannot be used: the message names the file, line or column."""
