"""The messages on the wire: one JSON object per line, encoded in one place.

A request is a text line (`apps:create x`) or a JSON object; the answer is zero or more *event* lines
(objects with an `"event"` key) followed by exactly one *final* line (an object with an `"ok"` key).
"""

from __future__ import annotations

from typing import Any

import msgspec

ERROR_CODES = frozenset(
    {
        "invalid_command",
        "invalid_argument",
        "not_found",
        "conflict",
        "incompatible",
        "timeout",
        "busy",
        "line_too_long",
        "invalid_request",
        "unavailable",
        "internal",
        "forbidden",
    }
)


# how the `busy` answer to a command over its user's bound of commands a second begins (not run: send it
# again, berthd reads the connection's next line when the user's turn comes)
TOO_MANY_COMMANDS = "Too many commands from uid "


class JsonRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON form of a request: `{"cmd": "apps:create", "args": ["x"], "id": "c-1"}`."""

    cmd: str
    args: list[str] | dict[str, Any] = msgspec.field(default_factory=list)
    id: str | int | None = None


class Response(msgspec.Struct, omit_defaults=True):
    """The final line of every request."""

    ok: bool
    output: str
    data: Any = None
    error: str | None = None
    id: str | int | None = None


class LogEvent(msgspec.Struct, tag_field="event", tag="log", omit_defaults=True):
    app: str
    process: str
    stream: str
    line: str
    missed: int = 0  # lines before this one that the client was too slow to get
    continued: bool = False  # a piece of a longer line: the line goes on in the next event


class ProgressEvent(msgspec.Struct, tag_field="event", tag="progress", omit_defaults=True):
    stage: str
    done: int | None = None
    total: int | None = None


class QueuedEvent(msgspec.Struct, tag_field="event", tag="queued"):
    position: int


class AuditEvent(msgspec.Struct, tag_field="event", tag="audit"):
    """One new line of the audit log (`audit:tail --follow`), as the object it holds."""

    entry: dict[str, Any]


Event = LogEvent | ProgressEvent | QueuedEvent | AuditEvent

_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)


def encode_line(message: Response | Event) -> bytes:
    """One message as one compact JSON line; control characters are escaped, so it never spans lines."""
    return _encoder.encode(message) + b"\n"


def decode_line(line: bytes | str) -> Response | dict[str, Any]:
    """A line from the daemon: a `Response` for the final line, the raw object for an event."""
    obj = msgspec.json.decode(line)
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object: {line!r}")
    if "ok" in obj:
        return msgspec.convert(obj, Response)
    return obj
