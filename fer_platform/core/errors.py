"""Errors that end a command or a run with one readable line."""


class FerError(Exception):
    """A failure the user can act on; ``str()`` is one line that says what and where."""


class ConfigError(FerError):
    """A wrong or missing setting."""


class DatabaseUnavailable(FerError):
    """PostgreSQL cannot be reached or is not usable (message names the host, never the password)."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name if it has none)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
