"""`manual-install --harp`: the user runs the ExApp; berthd waits for its heartbeat and registers it in
HaRP's `exapp_storage` while it answers."""

from __future__ import annotations

import msgspec

from berthd.deploy.exapp import harp_route_host
from berthd.runners import ExitStatus, Features, Handle, OutputSink, ProcessSpec, Target
from berthd.runners.harp.base import HarpBase, daemon_of
from berthd.runners.manual.runner import ManualRunner


class HarpManualRunner(ManualRunner, HarpBase):
    """`manual-install --harp`: the user runs the ExApp; berthd waits for its heartbeat and registers it
    in HaRP's `exapp_storage` while it answers."""

    name = "harp-manual"
    features = Features(engine=True)

    async def spec_for(self, target: Target, process: str) -> ProcessSpec:
        spec = await super().spec_for(target, process)
        daemon = daemon_of(target)
        port = int(spec.options["port"])
        storage = await self.storage_for(target, harp_route_host(daemon, target.app.name), port)
        return msgspec.structs.replace(
            spec, options={**spec.options, "daemon": daemon.name, "storage": storage}
        )

    async def start(self, spec: ProcessSpec, output: OutputSink) -> Handle:
        handle = await super().start(spec, output)
        daemon = str(spec.options["daemon"])
        await self.register_storage(daemon, spec.options["storage"])
        return msgspec.structs.replace(handle, detail={**handle.detail, "daemon": daemon, "app": spec.app})

    async def wait(self, handle: Handle) -> ExitStatus:
        try:
            return await super().wait(handle)
        finally:
            await self.forget(handle.detail["daemon"], handle.detail["app"])

    async def stop(self, handle: Handle, timeout: float, signum: int = 15) -> ExitStatus | None:
        await self.unregister_storage(handle.detail["daemon"], handle.detail["app"])
        return ExitStatus(0)

    async def remove(self, target: Target, keep_data: bool) -> None:
        await self.unregister_storage(daemon_of(target).name, target.app.name)
