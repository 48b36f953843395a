"""audit:tail [--num N] [--follow]: the audit log's last lines, then (with --follow) each new one, for root.

Lines are read from the end of the files backwards, so the memory held is that of the lines shown,
whatever the size of the files. A follower starts right after the lines it was shown, follows the
log across rotations, and ends when its client goes or when berthd stops.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import msgspec
import trio

from berth.messages import AuditEvent
from berthd.commands.logs import until_client_leaves
from berthd.errors import CommandError, forbidden
from berthd.server.context import Context
from berthd.server.params import Params
from berthd.server.registry import REGISTRY, Result

MAX_LINES = 10_000


class AuditTailParams(Params):
    num: Annotated[
        int, msgspec.Meta(ge=0, le=MAX_LINES, description=f"a number of lines from 0 to {MAX_LINES}")
    ] = 20
    follow: bool = False
    metavars = {"num": "N"}


_entry = msgspec.json.Decoder(dict[str, Any])


def _parsed(lines: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """Each line with its entry; a line that is not one (none should be) is left out."""
    entries = []
    for line in lines:
        try:
            entries.append((line.decode(), _entry.decode(line)))
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue
    return entries


@REGISTRY.command(
    "audit:tail",
    summary="the audit log's last lines (root); --follow streams new ones",
    mutating=False,
    streaming=True,
    secret_output=True,  # who did what is root's to read, not the daemon log's
)
async def audit_tail(ctx: Context, params: AuditTailParams) -> Result:
    if not ctx.peer.is_root:
        raise forbidden("audit:tail is for root only")
    audit = ctx.services.audit
    if audit is None:
        raise CommandError("unavailable", "there is no audit log: berthd runs with --audit-log off")
    try:
        fd, end = audit.open_current()
    except OSError as exc:  # removed or replaced by hand
        raise CommandError("unavailable", f"cannot read the audit log {audit.path}: {exc.strerror}") from None
    try:
        entries = _parsed(await trio.to_thread.run_sync(audit.tail, params.num, fd, end))
    except BaseException:
        os.close(fd)
        raise
    if not params.follow:
        os.close(fd)
        return Result("\n".join(text for text, _ in entries), [entry for _, entry in entries])
    async with trio.open_nursery() as nursery:

        async def deliver(lines: list[bytes]) -> None:
            for _, entry in _parsed(lines):
                try:
                    await ctx.emit(AuditEvent(entry))
                except Exception:  # noqa: BLE001 - as the server says a client left; commands know no sockets
                    if not ctx.client_gone():
                        raise
                    nursery.cancel_scope.cancel()
                    return

        async def follow() -> None:
            try:
                await deliver([text.encode() for text, _ in entries])
            except BaseException:
                os.close(fd)  # else audit.follow closes it, whatever becomes of it
                raise
            await audit.follow(fd, end, deliver)
            nursery.cancel_scope.cancel()

        nursery.start_soon(follow)
        nursery.start_soon(until_client_leaves, ctx, nursery.cancel_scope)
    return Result("end of the audit log (berthd is stopping)" if audit.stopping else "end of the audit log")
