"""`kubernetes-install`: ExApps on HaRP's Kubernetes backend.

HaRP makes a Deployment (and its PVC), scales it to 1 to start and to 0 to stop, and exposes it by a Service
as the daemon says (`--k8s_expose_type`); it routes to the ExApp directly, never through FRP. HaRP passes
no logs and no pod state of a Kubernetes ExApp through: berthd knows only whether its Deployment exists.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from berthd.deploy.exapp import compute_device, exapp_env, free_port
from berthd.errors import CommandError
from berthd.runners import (
    DaemonStatus,
    ExitStatus,
    Features,
    Handle,
    OutputSink,
    ProcessSpec,
    RunnerError,
    Target,
)
from berthd.runners.harp.base import HarpBase, daemon_of, exapp_name
from berthd.runners.harp.client import WAIT_TIMEOUT_S, HarpClient

K8S_WATCH = 5.0  # HaRP tells of a Deployment only whether it exists


class HarpKubernetesRunner(HarpBase):
    """`kubernetes-install`: a Deployment (and its PVC) made by HaRP's Kubernetes backend, scaled to 1 to
    start and to 0 to stop, exposed by a Service as the daemon says; HaRP routes to it directly."""

    name = "harp-kubernetes"
    features = Features(engine=True)  # HaRP passes no logs and no pod state of a Kubernetes ExApp through

    async def spec_for(self, target: Target, process: str) -> ProcessSpec:
        record, daemon = target.app, daemon_of(target)
        secret, port = await self.host.store.exapp_identity(record.name, lambda taken: free_port(taken))
        config = await self.host.store.get_config(record.name)
        create = {
            **exapp_name(record.name),
            "image": record.source.detail["image"],
            "environment_variables": exapp_env(record, daemon, secret, port, config),
            "compute_device": compute_device(daemon),
        }
        k8s = daemon.deploy_config.kubernetes
        expose: dict[str, Any] = {**exapp_name(record.name), "port": port}
        if k8s is not None:
            expose |= {
                "expose_type": k8s.expose_type,
                "upstream_host": k8s.upstream_host,
                "node_port": k8s.node_port,
                "external_traffic_policy": k8s.external_traffic_policy,
                "load_balancer_ip": k8s.load_balancer_ip,
                "node_address_type": k8s.node_address_type,
            }
        options = {"daemon": daemon.name, "create": create, "expose": expose, "port": port}
        return ProcessSpec(app=record.name, process=process, argv=[], options=options)

    async def start(self, spec: ProcessSpec, output: OutputSink) -> Handle:
        daemon, app = str(spec.options["daemon"]), spec.app
        client = await self._client(daemon)
        exists = await client.request("POST", "/k8s/exapp/exists", exapp_name(app))
        if not (isinstance(exists, dict) and exists.get("exists")):
            await client.request("POST", "/k8s/exapp/create", spec.options["create"], ok=(409,))
        await client.request("POST", "/k8s/exapp/start", exapp_name(app))
        answer = await client.request(
            "POST", "/k8s/exapp/wait_for_start", exapp_name(app), timeout=WAIT_TIMEOUT_S
        )
        if not (isinstance(answer, dict) and answer.get("started")):
            detail = answer if isinstance(answer, dict) else {}
            why = detail.get("message") or detail.get("reason") or detail.get("health") or "no reason given"
            raise RunnerError(f"ExApp {app} did not start on Kubernetes: {detail.get('status', '?')} ({why})")
        upstream = await client.request("POST", "/k8s/exapp/expose", spec.options["expose"])
        if not isinstance(upstream, dict) or "host" not in upstream or "port" not in upstream:
            raise RunnerError(f"HaRP's answer to expose {app} has no upstream host and port")
        record = await self.host.store.get_app(app)
        if record is None:
            raise RunnerError(f"App {app} no longer exists")
        target = Target(record, await self._daemon(daemon))
        host, port = str(upstream["host"]), int(upstream["port"])
        await self.register_storage(daemon, await self.storage_for(target, host, port))
        return Handle(
            runner=self.name,
            ref=f"{host}:{port}",
            started_at=time.time(),
            detail={"daemon": daemon, "app": app, "expose_type": str(upstream.get("exposeType", ""))},
        )

    async def wait(self, handle: Handle) -> ExitStatus:
        daemon, app = handle.detail["daemon"], handle.detail["app"]
        try:
            while True:
                await trio.sleep(K8S_WATCH)
                try:
                    exists = await (await self._client(daemon)).request(
                        "POST", "/k8s/exapp/exists", exapp_name(app)
                    )
                except CommandError:
                    continue  # HaRP or the cluster away: the pod may well still run
                if isinstance(exists, dict) and not exists.get("exists"):
                    return ExitStatus(None, 9)  # the Deployment was removed behind berthd's back
        finally:
            await self.forget(daemon, app)

    async def stop(self, handle: Handle, timeout: float, signum: int = 15) -> ExitStatus | None:
        daemon, app = handle.detail["daemon"], handle.detail["app"]
        await self.unregister_storage(daemon, app)
        await (await self._client(daemon)).request("POST", "/k8s/exapp/stop", exapp_name(app), ok=(404,))
        return ExitStatus(0)

    async def inspect(self, handle: Handle) -> dict[str, object]:
        return {"upstream": handle.ref, "expose_type": handle.detail.get("expose_type")}

    async def remove(self, target: Target, keep_data: bool) -> None:
        daemon, app = daemon_of(target).name, target.app.name
        await self.unregister_storage(daemon, app)
        body = {**exapp_name(app), "remove_data": not keep_data}
        await (await self._client(daemon)).request("POST", "/k8s/exapp/remove", body)

    async def _check_backend(self, client: HarpClient, version: str, info: dict[str, Any]) -> DaemonStatus:
        k8s = info.get("kubernetes")
        if not isinstance(k8s, dict):
            why = "HaRP version is too old and does not report Kubernetes support. Please update HaRP."
            return DaemonStatus(False, harp_version=version, why=why)
        if not k8s.get("enabled"):
            why = "Kubernetes backend is disabled in HaRP. Set HP_K8S_ENABLED=true in HaRP configuration."
            return DaemonStatus(False, harp_version=version, kubernetes_reachable=False, why=why)
        if not k8s.get("reachable"):
            why = f"HaRP cannot reach the Kubernetes API server ({k8s.get('api_server') or 'unknown'})"
            return DaemonStatus(False, harp_version=version, kubernetes_reachable=False, why=why)
        return DaemonStatus(True, harp_version=version, kubernetes_reachable=True)
