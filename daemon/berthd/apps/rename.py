"""What `apps:rename` does beyond the store's one transaction: the app's folder moved with rename(2).

The store renames first and marks the app (`renamed_from`); the folder moves next and the mark goes. A
berthd killed in between finds the mark at its next start and moves the folder then, before anything
looks for folders no app has.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import trio

from berthd.log import LOG
from berthd.store import Store
from berthd.store.records import AppRecord

RENAMED_FROM = "renamed_from"


def move_folder(old_dir: Path, new_dir: Path) -> None:
    """The folder under its new name (one rename(2), in the same parent), unless it moved already."""
    if os.path.lexists(old_dir) and not os.path.lexists(new_dir):
        os.rename(old_dir, new_dir)


async def finish_rename(store: Store, app_dir: Callable[[str], Path], record: AppRecord) -> None:
    old = record.source.detail.get(RENAMED_FROM)
    if old is None:
        return
    await trio.to_thread.run_sync(move_folder, app_dir(old), app_dir(record.name))
    await store.finish_rename(record.name)


async def finish_renames(store: Store, app_dir: Callable[[str], Path]) -> None:
    """At start: the folders of apps renamed just before the last berthd died, moved."""
    for record in await store.list_apps():
        if RENAMED_FROM in record.source.detail:
            LOG.warning("%s: finishing its rename from %s", record.name, record.source.detail[RENAMED_FROM])
            await finish_rename(store, app_dir, record)
