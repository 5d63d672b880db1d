"""One exception root for every user-facing mistake.

The CLI prints `error: <message>` on one line and exits with status 2 for a GoushiError; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GoushiError(Exception):
    """A bad input or a failed precondition; the message names the file, field or value and the fix."""


class ConfigError(GoushiError, ValueError):
    """A configuration value is impossible; the message names the field. (A ValueError too, for callers
    that validate settings generically.)"""


__all__ = ["GoushiError", "ConfigError"]
