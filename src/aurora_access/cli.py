"""The ``aurora-access`` command line.

``aurora-access local up|env|status|failover|add-reader|remove-reader|down`` runs the local
Aurora-like cluster in the background; ``eval "$(aurora-access local up)"`` configures a shell
for it. ``aurora-access demo`` is the main job: shop traffic through the library while the
writer fails over (see ``demo/runner.py``). ``aurora-access check`` checks the ``AURORA_*``
configuration against its cluster (see ``check.py``); ``aurora-access watch`` shows it live
(``watch.py``). Every failure prints one clear line on stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .check import run_check
from .demo import runner as demo_runner
from .errors import AuroraAccessError
from .local import LocalCluster
from .local.layout import default_runtime_root
from .watch import add_arguments as add_watch_arguments
from .watch import run as run_watch


def _default_dir() -> Path:
    override = os.environ.get("AURORA_LOCAL_DIR")
    return Path(override) if override else default_runtime_root() / "aurora-access-local"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aurora-access",
        description="Amazon Aurora access: demo, configuration check, local cluster")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="shop traffic through the library while the writer fails over (a local "
        "cluster unless AURORA_CLUSTER_ENDPOINT is set)")
    demo_runner.add_arguments(demo)
    check = commands.add_parser("check", help="check the AURORA_* configuration: DNS, login, "
                                "topology, every instance, TLS and auth mode")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--workers", type=int, default=1, metavar="N",
                       help="processes that will use this configuration (gunicorn --workers): "
                       "the connection budget is checked for them (default 1)")
    check.add_argument("--async", dest="use_async", action="store_true",
                       help="the processes use AsyncDatabase (one more pool of the library's "
                       "per instance)")
    watch = commands.add_parser("watch", help="a live view of the cluster: instances, roles, "
                                "lag, this configuration's connections, failovers")
    add_watch_arguments(watch)
    local = commands.add_parser("local", help="a local Aurora-like cluster for development")
    actions = local.add_subparsers(dest="action", required=True)
    dir_help = "state and data directory (default: $AURORA_LOCAL_DIR or %(default)s)"
    up = actions.add_parser("up", help="start a cluster in the background, print export lines")
    up.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    up.add_argument("--readers", type=int, default=2)
    up.add_argument("--replica-lag-ms", type=int, default=0)
    up.add_argument("--endpoint-delay", type=float, default=0.0, metavar="S",
                    help="seconds the cluster endpoint keeps pointing at the old writer")
    up.add_argument("--port", type=int, default=None)
    up.add_argument("--tls", action="store_true",
                    help="serve TLS with a CA made for the cluster (AURORA_SSLROOTCERT)")
    for name, text in [("env", "print the export lines of a running cluster again"),
                       ("status", "show instances, roles and replica lag"),
                       ("failover", "crash the writer and promote a reader"),
                       ("add-reader", "add a reader, as Aurora Auto Scaling does"),
                       ("down", "stop everything the cluster started")]:
        actions.add_parser(name, help=text)
    remove = actions.add_parser("remove-reader", help="delete a reader (its connections cut)")
    remove.add_argument("id", help="the reader's instance id (aurora-access local status)")
    for action in actions.choices.values():
        action.add_argument("--dir", type=Path, default=_default_dir(), help=dir_help)
    return parser


def _up(args: argparse.Namespace) -> None:
    cluster = LocalCluster(engine=args.engine, readers=args.readers,
                           replica_lag_ms=args.replica_lag_ms, endpoint_delay_s=args.endpoint_delay,
                           port=args.port, dir=args.dir, tls=args.tls)
    cluster.start()
    cluster.detach()
    for line in cluster.recovered_stale:
        print(f"# {line}", file=sys.stderr)
    print(f"# local cluster up in {cluster.started_in_s:.2f} s: {cluster.describe()}",
          file=sys.stderr)
    print(f"# stop it with: aurora-access local down --dir {shlex.quote(str(args.dir))}",
          file=sys.stderr)
    _print_exports(cluster, args.dir)


def _env(args: argparse.Namespace) -> None:
    """The export lines ``up`` printed, for another shell: ``eval "$(aurora-access local
    env)"``."""
    _print_exports(LocalCluster.attach(args.dir), args.dir)


def _print_exports(cluster: LocalCluster, directory: Path) -> None:
    """The cluster's ``AURORA_*`` settings, and ``AURORA_LOCAL_DIR`` so that the shell's next
    ``aurora-access local ...`` commands find this cluster without ``--dir``."""
    exports = {**cluster.env(), "AURORA_LOCAL_DIR": str(Path(directory).resolve())}
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")


def _status(args: argparse.Namespace) -> None:
    cluster = LocalCluster.attach(args.dir)
    print(cluster.describe())
    try:
        lags = cluster.replica_lags()
    except Exception as exc:  # the writer may be down: say so, do not fail the status
        print(f"writer not answering: {exc}")
        return
    for instance in cluster.instances:
        lag = lags.get(instance.id)
        shown = "not streaming" if lag is None else f"lag {lag:.1f} ms"
        print(f"  {instance.id} {instance.host}:{instance.port} {instance.role:6} {shown}")


def _failover(args: argparse.Namespace) -> None:
    print(LocalCluster.attach(args.dir).failover())


def _add_reader(args: argparse.Namespace) -> None:
    reader = LocalCluster.attach(args.dir).add_reader()
    print(f"added reader {reader.id} at {reader.host}:{reader.port}")


def _remove_reader(args: argparse.Namespace) -> None:
    took = LocalCluster.attach(args.dir).remove_reader(args.id)
    print(f"removed reader {args.id} in {took:.3f} s")


def _down(args: argparse.Namespace) -> None:
    cluster = LocalCluster.attach(args.dir)
    cluster.close()
    with contextlib.suppress(OSError):  # the directory `up` made, if nothing else is in it
        args.dir.rmdir()
    left = cluster.listening_addresses()
    if left:
        raise AuroraAccessError(f"sockets still listening after down: {', '.join(left)}")
    print(f"stopped the local cluster in {args.dir}; no process or listening socket left")


def _demo(args: argparse.Namespace) -> int:
    return demo_runner.run(args)


def _check(args: argparse.Namespace) -> int:
    """The report on stdout (JSON with ``--json``, so stdout stays parseable); a failure also
    gets its one line on stderr."""
    if args.workers < 1:
        raise AuroraAccessError(f"--workers must be at least 1, not {args.workers}")
    report = run_check(workers=args.workers, asynchronous=args.use_async)
    print(report.as_json() if args.json else report.text())
    if report.exit_code:
        failed = ", ".join(check.name for check in report.failures)
        print(f"aurora-access: error: check failed: {failed}", file=sys.stderr)
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int | None]] = {
        "up": _up, "env": _env, "status": _status, "failover": _failover, "down": _down,
        "add-reader": _add_reader, "remove-reader": _remove_reader, "check": _check,
        "demo": _demo, "watch": run_watch}
    try:
        # `local` has actions; other commands are their own handler
        code = handlers[args.action if args.command == "local" else args.command](args)
    except AuroraAccessError as exc:
        print(f"aurora-access: error: {exc}", file=sys.stderr)
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
