"""`berthd`: parse the command line, open the store and the socket, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import msgspec
import trio

from berthd import __version__
from berthd.access.audit import AuditLog, AuditLogError
from berthd.access.rules import RulesError, RuleSet, load_rules
from berthd.apps import launch
from berthd.apps.rename import finish_renames
from berthd.commands.sources import sweep_interrupted_deploys
from berthd.commands.upload import expire_uploads
from berthd.config import Config, ConfigError, load_config
from berthd.host.capabilities import CapabilityCache, default_docker_url, docker_version_from
from berthd.log import LOG, set_log_level, setup_logging
from berthd.server.connections import Server
from berthd.server.context import Services
from berthd.server.listener import ListenerError, open_listener
from berthd.server.metrics_http import MetricsHttp
from berthd.server.notify import sd_notify
from berthd.store import Store, modes, trees
from berthd.supervision.jobs import prune_jobs_forever
from berthd.supervision.manager import ProcessManager


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(1, f"Error: {message}\nTry 'berthd -h' for help.\n")


class VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(f"Version {__version__}")
        parser.exit(0)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="berthd",
        description="berthd: a deploy daemon. One command a line on a UNIX socket; answers are JSON lines.",
        epilog="Environment: BERTHD_SOCK_PATH, BERTHD_LOGFILE, BERTHD_DATA_DIR, BERTHD_<OPTION>.",
    )
    parser.add_argument("-v", "--version", action=VersionAction)
    parser.add_argument("--config", metavar="FILE", help="a TOML file with any of the settings below")
    parser.add_argument("--socket", metavar="PATH", help="the socket's path")
    parser.add_argument("--socket-mode", metavar="MODE", help="the socket's mode, octal (default 0660)")
    parser.add_argument("--socket-group", metavar="GROUP", help="the socket's group")
    parser.add_argument("--data-dir", metavar="DIR", help="where the database and the apps' files live")
    parser.add_argument("--log-file", metavar="FILE", help="also log to this file")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-file-max-bytes", type=int, metavar="BYTES", help="rotate --log-file at this size (10 MiB)"
    )
    parser.add_argument(
        "--log-file-backups", type=int, metavar="N", help="rotated --log-file copies kept (default 5)"
    )
    parser.add_argument(
        "--audit-log", metavar="PATH|off", help="the audit log (default DATA_DIR/audit.log); off: none"
    )
    parser.add_argument(
        "--audit-log-max-bytes", type=int, metavar="BYTES", help="rotate the audit log at this size (10 MiB)"
    )
    parser.add_argument(
        "--audit-log-backups", type=int, metavar="N", help="rotated audit logs kept (default 5)"
    )
    parser.add_argument("--max-line", type=int, metavar="BYTES", help="longest request line (default 2 MiB)")
    parser.add_argument("--max-clients", type=int, metavar="N", help="connections at once (default 256)")
    parser.add_argument(
        "--max-clients-per-uid",
        type=int,
        metavar="N",
        help="connections one user (not root) may hold (default a quarter of --max-clients)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="close a connection with no command in progress after this long (default 300)",
    )
    parser.add_argument(
        "--commands-per-second-per-uid",
        type=float,
        metavar="N",
        help="commands a second one user (not root) may send, after its burst (default 100)",
    )
    parser.add_argument(
        "--command-burst-per-uid",
        type=int,
        metavar="N",
        help="commands one user (not root) may send at once (default 200)",
    )
    parser.add_argument("--sync", choices=["full", "normal"], help="SQLite synchronous mode (default full)")
    parser.add_argument("--shutdown-grace", type=float, metavar="SECONDS", help="how long shutdown waits")
    parser.add_argument(
        "--stop-timeout",
        type=float,
        metavar="SECONDS",
        help="SIGTERM to SIGKILL for app processes (default 10)",
    )
    parser.add_argument(
        "--log-max-bytes", type=int, metavar="BYTES", help="rotate a process log at this size"
    )
    parser.add_argument("--log-backups", type=int, metavar="N", help="rotated process logs kept (default 5)")
    parser.add_argument(
        "--upload-ttl", type=float, metavar="SECONDS", help="unfinished uploads expire (default 1 day)"
    )
    parser.add_argument(
        "--max-upload-bytes", type=int, metavar="BYTES", help="largest upload (default 4 GiB)"
    )
    parser.add_argument("--max-archive-bytes", type=int, metavar="BYTES", help="largest download (512 MiB)")
    parser.add_argument(
        "--max-unpacked-bytes", type=int, metavar="BYTES", help="largest unpacked archive (2 GiB)"
    )
    parser.add_argument(
        "--job-output-max-bytes", type=int, metavar="BYTES", help="output a run keeps (64 MiB)"
    )
    parser.add_argument("--jobs-keep", type=int, metavar="N", help="past runs kept per app (default 100)")
    parser.add_argument("--jobs-max-age", type=float, metavar="SECONDS", help="older runs go (30 days)")
    parser.add_argument("--max-uploads-per-app", type=int, metavar="N", help="open uploads per app (16)")
    parser.add_argument("--max-uploads", type=int, metavar="N", help="open uploads in all (default 128)")
    parser.add_argument(
        "--max-uploads-per-uid", type=int, metavar="N", help="open uploads of one user (a quarter of all)"
    )
    parser.add_argument(
        "--download-timeout", type=float, metavar="SECONDS", help="longest archive download (default 600)"
    )
    parser.add_argument(
        "--child-env",
        action="append",
        type=_pair,
        metavar="KEY=VALUE",
        help="a default in every app process's environment, under the app's config (PATH=..., LANG=...)",
    )
    parser.add_argument(
        "--pass-env",
        action="append",
        metavar="NAME",
        help="pass this variable of berthd's environment to app processes (NAME or NAME*; repeatable)",
    )
    parser.add_argument(
        "--cwd-root",
        action="append",
        dest="cwd_roots",
        metavar="DIR",
        help="a folder outside the apps' own where --cwd may point (repeatable)",
    )
    parser.add_argument(
        "--mount-root",
        action="append",
        dest="mount_roots",
        metavar="DIR",
        help="a folder where a --mount is the path it names, not one under the app's (repeatable)",
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="ADDR:PORT",
        help="serve the metrics at http://ADDR:PORT/metrics (default off; unauthenticated: keep it local)",
    )
    return parser


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    if args.child_env is not None:
        flags["child_env"] = dict(args.child_env)
    config_file = args.config or os.environ.get("BERTHD_CONFIG")
    if config_file:
        config_file = os.path.abspath(config_file)  # read again from here on SIGHUP

    def reread() -> Config:
        return load_config(config_file, os.environ, flags)

    try:
        config = reread()
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    try:
        # the log file sets its own mode
        setup_logging(config.log_level, config.log_file, config.log_file_max_bytes, config.log_file_backups)
    except OSError as exc:
        print(f"Error: cannot open the log file {config.log_file}: {exc.strerror}", file=sys.stderr)
        return 1
    launch.configure(
        launch.ChildDefaults.of(
            config.child_env, config.pass_env, config.cwd_roots, os.environ, config.mount_roots
        )
    )
    os.umask(modes.PRIVATE_UMASK)  # what berthd makes is its own until it gives it to an app
    try:
        return trio.run(serve, config, Settings(config_file, reread))
    except RulesError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except (ListenerError, AuditLogError, OSError) as exc:
        LOG.error("%s", exc)
        print(f"Error: {exc}", file=sys.stderr)
        return 1


async def sweep_orphaned_app_dirs(services: Services) -> None:
    """Folders of apps the database no longer has (a crash between the row and the files)."""
    known = {record.name for record in await services.store.list_apps()}
    apps_dir = services.data_dir / "apps"

    def sweep() -> None:
        for entry in apps_dir.iterdir():
            if entry.name not in known and entry.is_dir():
                LOG.info("removing files of destroyed app %s", entry.name)
                trees.remove_or_log(entry)

    await trio.to_thread.run_sync(sweep)


async def absolute_stored_paths(store: Store) -> None:
    """An older berthd started with a relative --data-dir stored relative paths (an executable, a
    checkout), which only its own folder could resolve: they are made absolute from this berthd's
    folder, the one `make run` always starts in."""
    for record in await store.list_apps():
        executable, source_dir = record.settings.executable, record.source.detail.get("source_dir")
        if executable and not os.path.isabs(executable):
            settings = msgspec.structs.replace(record.settings, executable=os.path.abspath(executable))
            await store.save_settings(record.name, settings)
            LOG.info("%s: executable %s is now %s", record.name, executable, settings.executable)
        if source_dir and not os.path.isabs(source_dir):
            detail = {**record.source.detail, "source_dir": os.path.abspath(source_dir)}
            current = await store.get_app(record.name)
            assert current is not None
            await store.save_source(
                record.name, msgspec.structs.replace(current.source, detail=detail), current.settings
            )


async def fix_file_modes(services: Services) -> None:
    """Each app's folder opened to its group only; what an older berthd left open to others, closed."""
    for record in await services.store.list_apps():
        app_dir = services.app_dir(record.name)
        if app_dir.is_dir():
            await trio.to_thread.run_sync(modes.fix_app_dir, app_dir, modes.app_group(record.settings.user))


SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PROBE_GRACE = 5.0  # how long shutdown lets a capability probe in flight end


def _default_engine_version(processes: ProcessManager, fallback_url: str | None) -> Callable[[], str | None]:
    """For the capability probe (on its worker thread): the Docker version of the default deploy
    daemon's engine, through that daemon's transport; else of the local engine, if there is one."""

    def version() -> str | None:
        status = trio.from_thread.run(processes.default_engine_status)
        if status is not None:
            return status.version
        return docker_version_from(fallback_url) if fallback_url else None

    return version


def _late_signal(signum: int, frame: object) -> None:
    LOG.info("received %s while stopping", signal.Signals(signum).name)


async def _stop_on_signal(
    signals: AsyncIterator[int],
    server: Server,
    audit: AuditLog | None,
    processes: ProcessManager,
    scope: trio.CancelScope,
    grace: float,
) -> None:
    """First signal: finish what is in progress, then stop. A second one: stop now."""
    async for signum in signals:
        LOG.info("received %s: finishing the commands in progress", signal.Signals(signum).name)
        sd_notify("STOPPING=1")
        server.shutdown()
        if audit is not None:
            audit.stop_following()
        break
    with trio.move_on_after(grace):
        async with trio.open_nursery() as nursery:

            async def second_signal() -> None:
                async for signum in signals:
                    LOG.warning("received %s again: stopping now", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(second_signal)
            await server.idle.wait()
            nursery.cancel_scope.cancel()
    # every process group gets SIGTERM, then SIGKILL after the stop timeout
    await processes.shutdown()
    scope.cancel()


def open_audit_log(config: Config) -> AuditLog | None:
    path = config.audit_path()
    return None if path is None else AuditLog(path, config.audit_log_max_bytes, config.audit_log_backups)


@dataclass(frozen=True)
class Settings:
    """Where the config came from, to read it again on SIGHUP."""

    config_file: str | None
    reread: Callable[[], Config]

    def rules(self, config: Config) -> RuleSet:
        from berthd.server.registry import REGISTRY

        return load_rules(config.access, self.config_file, [(c.name, *c.aliases) for c in REGISTRY])


async def _reload_on_sighup(services: Services, settings: Settings) -> None:
    """SIGHUP: the rules and the settings that can change live, read again; connections stay open. A
    config that does not load changes nothing."""
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        async for _ in hangups:
            try:
                new = await trio.to_thread.run_sync(settings.reread)
                rules = await trio.to_thread.run_sync(settings.rules, new)
            except (ConfigError, RulesError) as exc:
                LOG.error("SIGHUP: the config was not reloaded, the previous one stays: %s", exc)
                continue
            later = services.config.apply_live(new)
            services.rules = rules
            set_log_level(services.config.log_level)
            LOG.info("SIGHUP: config reloaded (%d access rules)", len(rules.rules))
            if later:
                LOG.warning("SIGHUP: %s change only when berthd restarts", ", ".join(sorted(later)))


async def serve(config: Config, settings: Settings | None = None) -> int:
    import berthd.commands  # noqa: F401 - fills the registry

    settings = settings or Settings(None, lambda: config)
    rules = settings.rules(config)

    # A signal after shutdown began (when the receiver below is gone) must not kill berthd mid-cleanup.
    # A handler, not SIG_IGN: handlers fall back to the default in children at exec, SIG_IGN would not.
    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, _late_signal)
    # The receiver opens before the socket does: a signal from the first instant on is acted upon.
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        data_dir = config.data_path()
        await trio.to_thread.run_sync(modes.prepare_data_dir, data_dir)
        audit = await trio.to_thread.run_sync(open_audit_log, config)  # refused: berthd does not start
        store = await Store.open(data_dir, config.sync.upper())
        await store.interrupt_running_jobs()
        await absolute_stored_paths(store)
        processes = ProcessManager(config, store, data_dir)
        try:
            capabilities = CapabilityCache(
                data_dir, engine=_default_engine_version(processes, default_docker_url())
            )
            services = Services(config, store, data_dir, processes, capabilities, audit, rules=rules)
            # everything berthd does before it serves is done before the socket exists
            await finish_renames(store, services.app_dir)  # before the sweep: a renamed app's folder
            await sweep_orphaned_app_dirs(services)
            await sweep_interrupted_deploys(store, services.app_dir)
            await fix_file_modes(services)
            await trio.to_thread.run_sync(modes.make_public_folders, config.socket_path().parent)
            # the metrics port too: an address that cannot be had stops berthd before any client connects
            metrics_http = (
                await MetricsHttp.open(services, config.metrics_listen) if config.metrics_listen else None
            )
            listener = open_listener(config.socket_path(), config.socket_mode_bits, config.socket_group)
            try:
                server = Server(services, listener.sock)
                async with trio.open_nursery() as nursery:
                    await nursery.start(processes.run)
                    nursery.start_soon(capabilities.run)
                    nursery.start_soon(expire_uploads, services)
                    nursery.start_soon(prune_jobs_forever, processes)
                    nursery.start_soon(_reload_on_sighup, services, settings)
                    if metrics_http is not None:
                        await nursery.start(metrics_http.serve)
                    await nursery.start(server.serve)
                    LOG.info(
                        "berthd %s listening on %s (data in %s)",
                        __version__,
                        listener.path or "a socket from systemd",
                        data_dir,
                    )
                    sd_notify("READY=1")
                    nursery.start_soon(
                        _stop_on_signal,
                        signals,
                        server,
                        audit,
                        processes,
                        nursery.cancel_scope,
                        config.shutdown_grace,
                    )
            finally:
                listener.remove()
                capabilities.wait_idle(PROBE_GRACE)
        finally:
            store.close()
            if audit is not None:
                audit.close()
    LOG.info("berthd stopped")
    return 0
