"""The ``zray`` command line (click).

Kept light: each command imports what it needs when it runs, so
``zray --help`` answers at once.  Commands are added to the ``main`` group
with ``@main.command()``; cluster commands (head, worker, status, stop)
belong here alongside ``microbenchmark``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Optional

import click

from zray import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zray")
def main() -> None:
    """zray: Ray's API for tasks, actors and objects, on a ZeroMQ bus."""


@main.command()
@click.option("--quick", is_flag=True,
              help="Smaller counts: done in about a minute on a 2-core machine.")
@click.option("--compare", type=click.Choice(["ray"]), default=None,
              help="Also run the same workloads against Ray and show the ratio.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--ray-python", metavar="PATH", default=None,
              help="Python that has Ray installed (default: $ZRAY_BENCH_RAY_PYTHON, "
                   "else this interpreter).")
@click.option("--num-cpus", type=click.IntRange(min=1), default=2, show_default=True,
              help="num_cpus given to init() on both sides.")
@click.option("--nodes", type=click.IntRange(min=2), default=None,
              help="Instead: start this many node agents on this machine as one cluster "
                   "(one CPU each) and measure SPREAD tasks over them (zray only).")
def microbenchmark(quick: bool, compare: Optional[str], as_json: bool,
                   ray_python: Optional[str], num_cpus: int, nodes: Optional[int]) -> None:
    """Measure task, actor and object throughput and latency.

    Each system runs in a fresh child process; progress goes to stderr,
    the table (or JSON) to stdout.
    """
    from zray._private import microbenchmark as mb

    if nodes:
        sys.exit(mb.run_nodes(nodes, quick=quick, as_json=as_json, echo=click.echo))
    status = mb.run(quick=quick, compare=compare, as_json=as_json, ray_python=ray_python,
                    num_cpus=num_cpus, echo=click.echo)
    sys.exit(status)


# --------------------------------------------------------------------------- clusters

def _node_options(fn):
    options = [
        click.option("--num-cpus", type=click.FloatRange(min=0), default=None,
                     help="CPUs this node offers (default: the machine's count)."),
        click.option("--num-gpus", type=click.FloatRange(min=0), default=None,
                     help="GPUs this node offers (default: those detected)."),
        click.option("--resources", default="{}", metavar="JSON",
                     help='Custom resources, e.g. \'{"accelerator": 2}\'.'),
        click.option("--object-store-memory", type=click.IntRange(min=1 << 20), default=None,
                     metavar="BYTES", help="Size of this node's shared-memory object store."),
        click.option("--block", is_flag=True,
                     help="Stay in the foreground until Ctrl-C, then stop this node."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _node_settings(num_cpus, num_gpus, resources, object_store_memory) -> dict:
    import psutil

    from zray._private import scheduling, services

    try:
        custom = json.loads(resources)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--resources")
    if not isinstance(custom, dict):
        raise click.BadParameter("must be a JSON object of name: amount",
                                 param_hint="--resources")
    try:
        scheduling.validate_resource_request(None, None, custom, where="--resources")
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--resources")
    detected = services.detect_gpus()
    gpus = len(detected) if num_gpus is None else num_gpus
    gpu_ids = detected[:int(gpus)] if len(detected) >= gpus else list(range(int(gpus)))
    return {"num_cpus": num_cpus if num_cpus is not None else (psutil.cpu_count() or 1),
            "num_gpus": gpus, "gpu_ids": gpu_ids, "resources": custom,
            "store_bytes": object_store_memory or services.default_store_bytes()}


def _block_until_signal(record: dict) -> None:
    """Foreground mode: wait for Ctrl-C (or SIGTERM, or the node dying), then stop it."""
    import psutil

    from zray._private import services

    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    click.echo("Running in the foreground; Ctrl-C stops this node.")
    procs = [psutil.Process(p["pid"]) for p in record["procs"]]
    try:
        while not stop:
            gone, _ = psutil.wait_procs(procs, timeout=0.5)
            if gone:
                click.echo("a zray process of this node exited; stopping the node", err=True)
                break
    finally:
        services.stop_record(record)
        click.echo("stopped")


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=6380, show_default=True,
              help="TCP port of the head's broker.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on. The default admits this machine only; use "
                   "0.0.0.0 or this machine's address to let other machines join.")
@click.option("--dashboard-host", default="127.0.0.1", show_default=True,
              help="Interface the dashboard listens on. Off loopback it asks for the "
                   "cluster token.")
@click.option("--dashboard-port", type=click.IntRange(0, 65535), default=8265,
              show_default=True, help="The dashboard's port (0: any free port).")
@click.option("--include-dashboard/--no-dashboard", default=True, show_default=True,
              help="Serve the web dashboard from the head.")
@click.option("--restore", is_flag=True,
              help="Start again the head of the cluster whose head node runs on this "
                   "machine, after its process died: same address, same token; the nodes "
                   "register again with what they have. Without it, `zray head` does so "
                   "by itself when it finds such a head.")
@click.option("--no-restore", is_flag=True,
              help="Start a new cluster even if a head started here died while its node "
                   "runs on.")
@_node_options
@click.pass_context
def head(ctx, port, host, dashboard_host, dashboard_port, include_dashboard, restore,
         no_restore, num_cpus, num_gpus, resources, object_store_memory, block) -> None:
    """Start a cluster: the head and this machine's node agent.

    If a head started on this machine died while its node runs on, start
    that head again instead (same address, same token), unless told
    --no-restore. Prints the address and the token, and the exact commands
    that join another node or connect a driver. Every TCP peer must present
    the token (CURVE); nothing is unpickled from a peer without it.
    """
    from zray._private import services

    if restore and no_restore:
        raise click.UsageError("--restore and --no-restore ask for opposite things")
    if restore or not no_restore:
        asked = ctx.get_parameter_source("port") is not click.core.ParameterSource.DEFAULT
        if _restored(restore, port if asked else None):
            return
    settings = _node_settings(num_cpus, num_gpus, resources, object_store_memory)
    try:
        dashboard = f"{dashboard_host}:{dashboard_port}" if include_dashboard else ""
        record = services.start_head(host=host, port=port, dashboard=dashboard, **settings)
    except services.ClusterError as exc:
        raise click.ClickException(str(exc))
    address, token = record["address"], record["token"]
    click.echo(f"zray head started at {address} (node {record['node_id'][:12]}, "
               f"session {record['session_dir']})")
    click.echo(f"token: {token}")
    if record.get("dashboard_url"):
        click.echo(f"dashboard: {record['dashboard_url']}")
    elif record.get("dashboard_error"):
        click.echo(f"no dashboard: {record['dashboard_error']}", err=True)
    click.echo("")
    click.echo("Join another node:")
    click.echo(f"    zray worker --address {address} --token {token}")
    click.echo("Connect a driver on a node of this cluster:")
    click.echo(f"    zray.init(address=\"{address}\")")
    click.echo("Inspect, and stop the zray processes of this machine:")
    click.echo("    zray status")
    click.echo("    zray stop")
    if block:
        _block_until_signal(record)


@main.command()
@click.option("--address", required=True, metavar="HOST:PORT",
              help="The head's address, as `zray head` printed it.")
@click.option("--token", envvar="ZRAY_TOKEN", default=None,
              help="The cluster token `zray head` printed (or $ZRAY_TOKEN; on the head's "
                   "own machine it is found by itself).")
@_node_options
def worker(address, token, num_cpus, num_gpus, resources, object_store_memory, block) -> None:
    """Start a node agent on this machine and join the cluster at --address."""
    from zray._private import security, services

    settings = _node_settings(num_cpus, num_gpus, resources, object_store_memory)
    try:
        token = token or _local_token(address)
        security.check_token(token)
        record = services.start_worker(address=address, token=token, **settings)
    except (services.ClusterError, security.TokenError) as exc:
        raise click.ClickException(str(exc))
    click.echo(f"zray worker node {record['node_id'][:12]} joined {record['address']} with "
               f"{_resources_text(record['resources'])}")
    if block:
        _block_until_signal(record)


def _restored(asked: bool, port: Optional[int]) -> bool:
    """Start again a head of this machine that died while its node runs on: the one
    --restore asks for, else (plain `zray head`) one found on ``port`` or any port."""
    from zray._private import restore, services

    record = None
    try:
        if asked:
            record = restore.restore_head()
        else:
            found, why_not = restore.find_restorable(port)
            then = "" if found is not None else "; a new cluster starts"
            for why in why_not:
                click.echo(f"not restored: {why}{then}", err=True)
            if found is not None:
                record = restore.restore_head(record=found)
    except services.ClusterError as exc:
        if asked:
            raise click.ClickException(str(exc))
        click.echo(f"not restored: {exc}; a new cluster starts", err=True)
    if record is None:
        return False
    how = "" if asked else " (its process had died while its node ran on; --no-restore " \
                           "starts a new cluster instead)"
    click.echo(f"zray head restored at {record['address']} (session "
               f"{record['session_dir']}){how}; the nodes register again as they hear it")
    return True


def _resources_text(resources: dict) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items()))


def _local_token(address: Optional[str]) -> str:
    from zray._private import services

    try:
        return services.find_record(address)["token"]
    except services.ClusterError:
        where = "" if address in (None, "auto") else f" of {address}"
        raise services.ClusterError(
            f"no token given and no zray node{where} runs on this machine to take it from: "
            f"pass --token (printed by `zray head`)")


@main.command()
@click.option("--address", default=None, metavar="HOST:PORT",
              help="The head to ask (default: the cluster this machine belongs to).")
@click.option("--token", envvar="ZRAY_TOKEN", default=None,
              help="The cluster token (default: taken from this machine's node record).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds to wait for the head's answer.")
def status(address, token, as_json, timeout) -> None:
    """Show every node, the resources in use, tasks and actors of a cluster."""
    from zray._private import security, services
    from zray._private import status as status_text

    try:
        if address is None:
            record = services.find_record("auto")
            address, token = record["address"], token or record["token"]
        token = token or _local_token(address)
        security.check_token(token)
        reply = services.head_query(address, token, "status", timeout=timeout)
    except (services.ClusterError, security.TokenError) as exc:
        raise click.ClickException(str(exc))
    summary = status_text.summarize(reply)
    summary["address"] = address
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        click.echo(status_text.format_status(summary, address))


@main.command()
def stop() -> None:
    """Stop the zray processes `zray head` and `zray worker` started on this machine.

    Only processes recorded at start (same pid and start time) are
    stopped, never others by name; their socket files, logs and
    shared memory are removed.
    """
    from zray._private import services

    records = services.read_records()
    if not records:
        click.echo("no zray node was started on this machine")
        return
    for record in records:
        pids = services.stop_record(record)
        click.echo(f"stopped {record.get('kind', 'node')} node {record.get('node_id', '?')[:12]}"
                   f" ({len(pids)} process(es))")


# --------------------------------------------------------------------------- state

def _address_option(fn):
    return click.option("--address", default=None, metavar="HOST:PORT",
                        help="The head to ask (default: the cluster this machine "
                             "belongs to).")(fn)


def _state(kind: str, address: Optional[str], **question) -> dict:
    from zray import exceptions
    from zray.util.state import api

    try:
        return api.query(kind, address=address, **question)
    except (ValueError, exceptions.RayError) as exc:
        raise click.ClickException(str(exc))


@main.command("list")
@click.argument("kind", type=click.Choice(["tasks", "actors", "objects", "nodes", "workers",
                                           "jobs", "placement-groups"]))
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Keep rows whose KEY is (=) or is not (!=) VALUE; repeatable.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--detail", is_flag=True, help="Every field (tasks: their events too).")
@_address_option
def list_(kind, filters, limit, fmt, detail, address) -> None:
    """List the cluster's tasks, actors, objects, nodes, workers, jobs or placement groups."""
    from zray._private import state_cli
    from zray._private.observe import tables

    try:
        parsed = [tables.parse_filter(f) for f in filters]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--filter")
    if kind == "placement-groups":   # kept by the head's scheduler, asked through a node
        from zray.util.state import api

        rows = api.list_placement_groups(address, filters=parsed, limit=limit)
        click.echo(state_cli.format_rows("placement_groups", rows, len(rows), fmt))
        return
    reply = _state(kind, address, filters=parsed, limit=limit, detail=detail)
    click.echo(state_cli.format_rows(kind, reply.get("rows", []), reply.get("total", 0),
                                     "json" if detail and fmt == "table" else fmt))


@main.command()
@click.argument("kind", type=click.Choice(["tasks", "actors", "objects"]))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@_address_option
def summary(kind, fmt, address) -> None:
    """Counts of tasks and actors by name and state, or of objects by node."""
    from zray._private import state_cli

    reply = _state(f"summary_{kind}", address, limit=None)
    click.echo(state_cli.format_summary(kind, reply.get("summary", {}), fmt))


@main.command()
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="How many of the largest objects to list.")
@_address_option
def memory(limit, address) -> None:
    """Objects in the stores by size: who holds them, where, and what is spilled."""
    from zray._private import state_cli

    summary_ = _state("summary_objects", address, limit=None).get("summary", {})
    reply = _state("objects", address, limit=limit)
    click.echo(state_cli.format_memory(reply.get("rows", []), reply.get("total", 0), summary_))


@main.command()
@click.option("--output", "-o", default=None, metavar="FILE",
              help="Where to write the trace (default: zray-timeline-<time>.json).")
@click.option("--job", default=None, metavar="JOB_ID", help="Only this job's tasks.")
@_address_option
def timeline(output, job, address) -> None:
    """Write the cluster's tasks as a Chrome trace (open it in Perfetto)."""
    from zray._private.observe import trace

    records = _state("tasks", address, limit=1 << 30, detail=True, job=job).get("rows", [])
    output = output or time.strftime("zray-timeline-%Y%m%d-%H%M%S.json")
    trace.write_trace(records, output)
    click.echo(f"{len(records)} task(s) written to {output}; open it in https://ui.perfetto.dev "
               f"or chrome://tracing")


@main.command()
@click.argument("which", required=False, default=None)
@click.option("--pid", type=int, default=None, help="Only the lines this worker printed.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing what is written.")
@click.option("--tail", type=click.IntRange(min=1), default=64 * 1024, show_default=True,
              metavar="BYTES", help="How much of the end of each file to print.")
def logs(which, pid, follow, tail) -> None:
    """Print this machine's zray logs: WHICH picks files by name (head, node,
    workers, tasks; `worker` means what tasks printed)."""
    from zray._private import state_cli

    dirs = state_cli.session_dirs()
    if not dirs:
        raise click.ClickException("no zray node runs on this machine")
    pick = {"worker": "tasks_", "workers": "workers_"}.get(which, which)
    paths = state_cli.pick_logs(dirs, pick)
    if not paths:
        names = sorted({n for d in dirs for n in state_cli.log_files(d)})
        raise click.ClickException(f"no log file matches {which!r}; there are: "
                                   f"{', '.join(names)}")
    if which is None and pid is None and not follow:
        for path in paths:
            click.echo(f"{path}  ({os.path.getsize(path)} bytes)")
        return
    for path in paths:
        text = state_cli.tail(path, tail)
        click.echo(state_cli.lines_of_pid(text, pid) if pid else text, nl=False)
    if follow:
        try:
            for text in state_cli.follow(paths):
                click.echo(state_cli.lines_of_pid(text, pid) if pid else text, nl=False)
        except KeyboardInterrupt:
            pass


from zray._private.job_cli import job as _job  # noqa: E402  (`zray job submit/logs/...`)

main.add_command(_job)

if __name__ == "__main__":
    main(prog_name="zray")
