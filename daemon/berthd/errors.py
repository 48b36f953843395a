"""The one exception a handler raises to answer `ok: false` with a machine code."""

from __future__ import annotations

from typing import Any


class CommandError(Exception):
    def __init__(self, code: str | None, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def invalid_argument(message: str) -> CommandError:
    return CommandError("invalid_argument", message)


def not_found(message: str) -> CommandError:
    return CommandError("not_found", message)


def conflict(message: str) -> CommandError:
    return CommandError("conflict", message)


def daemon_unavailable(daemon: str, why: str) -> CommandError:
    """The one error for a deploy daemon whose engine cannot be reached, with the daemon's name."""
    return CommandError("unavailable", f"deploy daemon {daemon} is unavailable: {why}", {"daemon": daemon})


def forbidden(message: str, data: Any = None) -> CommandError:
    """The caller may not do this (the access rules say so); never says whether an app exists."""
    return CommandError("forbidden", message, data)
