"""Errors that end a command or a run with one readable line."""


class FerError(Exception):
    """A failure the user can act on; ``str()`` is one line that says what and where."""


class ConfigError(FerError):
    """A wrong or missing setting."""


class DatabaseUnavailable(FerError):
    """PostgreSQL cannot be reached or is not usable (message names the host, never the password)."""
