"""One exception type for every user-facing mistake.

The CLI prints `error: <message>` on one line and exits with status 2 for these; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from goushi.config import ConfigError


class GoushiError(Exception):
    """A bad input or a failed precondition; the message names the file, field or value and the fix."""


# Config mistakes are user mistakes too; the CLI treats both alike.
USER_ERRORS: tuple[type[BaseException], ...] = (GoushiError, ConfigError)
