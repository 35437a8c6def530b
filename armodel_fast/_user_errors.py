"""User errors of the command line and the output-folder check its commands share.

``armodel_fast.cli.main`` prints every :class:`UserError` (the CLI's own ``CLIError``
and the ``UserError`` of ``armodel_fast.training.commands`` are this class) as one line
``error: ...`` and exits with status 2.
"""
from __future__ import annotations

import os


class UserError(ValueError):
    """A user error: printed by the CLI as one ``error: ...`` line, exit status 2."""

    exit_code = 2


class Interrupted(UserError):
    """Ctrl-C, with what to do next: one ``error: ...`` line, exit status 130 (as a shell's SIGINT)."""

    exit_code = 130


def writable_dir(path: str, flag: str) -> None:
    """Create the directory ``path`` now (for the option ``flag``), or raise :class:`UserError`
    saying why it cannot be, before any work starts."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag}: cannot create directory {path}: {e.strerror or e}; choose another path") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{flag}: directory {path} is not writable; choose another path")
