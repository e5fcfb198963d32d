"""``zray job``: submit a script to a `zray head` cluster and follow, stop or list jobs.

Every command talks to the head over its authenticated port through
:class:`zray.job_submission.JobSubmissionClient`; this module only turns
options into calls and answers into lines and exit codes.  Imports stay
inside the commands, so ``zray --help`` stays quick.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from typing import Any, Optional

import click


def _cluster_options(fn):
    fn = click.option("--token", envvar="ZRAY_TOKEN", default=None,
                      help="The cluster token `zray head` printed (or $ZRAY_TOKEN; on a "
                           "machine of the cluster it is found by itself).")(fn)
    return click.option("--address", envvar="ZRAY_ADDRESS", default=None, metavar="HOST:PORT",
                        help="The head's address (or $ZRAY_ADDRESS; default: the cluster "
                             "this machine belongs to).")(fn)


def _client(address: Optional[str], token: Optional[str]) -> Any:
    from zray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, token)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc))


def _call(fn, *args: Any, **kwargs: Any) -> Any:
    """A client call; the head's refusal (unknown job, ...) becomes a clean CLI error."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, ValueError, TypeError, ConnectionError) as exc:
        raise click.ClickException(str(exc))


def _entrypoint(words: tuple) -> str:
    """One word is a shell command line as it is; several are quoted word by word."""
    return words[0] if len(words) == 1 else shlex.join(words)


def _follow(client: Any, job_id: str) -> None:
    def echo_all() -> None:
        for text in client.tail_job_logs_sync(job_id):
            click.echo(text, nl=False)
            sys.stdout.flush()
    _call(echo_all)


def _final(client: Any, job_id: str) -> int:
    """Say how the job ended; the exit code that goes with it."""
    info = _call(client.get_job_info, job_id)
    status = info.status.value
    if status == "SUCCEEDED":
        click.echo(f"Job '{job_id}' succeeded.", err=True)
        return 0
    if status == "STOPPED":
        click.echo(f"Job '{job_id}' was stopped.", err=True)
    else:
        click.echo(f"Job '{job_id}' failed: {info.message}", err=True)
    return 1


@click.group("job")
def job() -> None:
    """Submit jobs to a `zray head` cluster, and follow, stop or list them.

    A job is a command run on the head's machine as a driver of the cluster
    (`zray.init()` in it joins the cluster). Requests travel only over the
    head's authenticated port and need the cluster token.
    """


@job.command(context_settings={"ignore_unknown_options": True,
                              "allow_interspersed_args": False})
@_cluster_options
@click.option("--working-dir", default=None, metavar="DIR",
              help="A local folder (or .zip) sent with the job; the entrypoint runs in it.")
@click.option("--runtime-env-json", default=None, metavar="JSON",
              help='The job\'s runtime_env, e.g. \'{"env_vars": {"A": "1"}}\'.')
@click.option("--metadata-json", default=None, metavar="JSON",
              help="Metadata to keep with the job (a JSON object of strings).")
@click.option("--submission-id", default=None, help="Name the job (default: one is made).")
@click.option("--no-wait", is_flag=True, help="Print the job's id and return at once.")
@click.argument("entrypoint", nargs=-1, required=True, type=click.UNPROCESSED)
def submit(address, token, working_dir, runtime_env_json, metadata_json, submission_id,
           no_wait, entrypoint) -> None:
    """Run ENTRYPOINT on the cluster and print its output until it ends.

    Example: zray job submit --working-dir . -- python script.py --n 10

    Exits 0 when the job succeeded, 1 when it failed or was stopped. Ctrl-C
    stops following, not the job.
    """
    runtime_env = _json_object(runtime_env_json, "--runtime-env-json")
    metadata = _json_object(metadata_json, "--metadata-json")
    if working_dir is not None:
        runtime_env["working_dir"] = working_dir
    client = _client(address, token)
    job_id = _call(client.submit_job, entrypoint=_entrypoint(entrypoint),
                   submission_id=submission_id, runtime_env=runtime_env or None,
                   metadata=metadata or None)
    click.echo(f"Job '{job_id}' submitted successfully.", err=True)
    if no_wait:
        click.echo(job_id)
        click.echo(f"Follow its output:  zray job logs --follow {job_id}\n"
                   f"Its status:         zray job status {job_id}\n"
                   f"Stop it:            zray job stop {job_id}", err=True)
        return
    click.echo("Tailing its output until it ends (Ctrl-C detaches; the job goes on):",
               err=True)
    try:
        _follow(client, job_id)
    except KeyboardInterrupt:
        click.echo(f"\nDetached; job '{job_id}' goes on. Follow it with "
                   f"`zray job logs --follow {job_id}`, stop it with "
                   f"`zray job stop {job_id}`.", err=True)
        sys.exit(130)
    sys.exit(_final(client, job_id))


def _json_object(text: Optional[str], option: str) -> dict:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option)
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    return value


@job.command()
@_cluster_options
@click.argument("job_id")
def status(address, token, job_id) -> None:
    """Print a job's status and what it says."""
    info = _call(_client(address, token).get_job_info, job_id)
    click.echo(f"Status for job '{job_id}': {info.status.value}")
    click.echo(f"Status message: {info.message}")


@job.command()
@_cluster_options
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def logs(address, token, job_id, follow) -> None:
    """Print what a job printed (stdout and stderr), even after it ended."""
    client = _client(address, token)
    if not follow:
        click.echo(_call(client.get_job_logs, job_id), nl=False)
        return
    try:
        _follow(client, job_id)
    except KeyboardInterrupt:
        pass


@job.command()
@_cluster_options
@click.argument("job_id")
@click.option("--no-wait", is_flag=True, help="Return once the stop is sent.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the job to end.")
def stop(address, token, job_id, no_wait, timeout) -> None:
    """Stop a job: SIGTERM to its process group, SIGKILL after a grace period."""
    client = _client(address, token)
    if not _call(client.stop_job, job_id):
        status_ = _call(client.get_job_status, job_id)
        click.echo(f"Job '{job_id}' had already ended ({status_.value}).")
        return
    click.echo(f"Stopping job '{job_id}'.")
    if no_wait:
        return
    deadline = time.monotonic() + timeout
    while not (status_ := _call(client.get_job_status, job_id)).is_terminal():
        if time.monotonic() > deadline:
            raise click.ClickException(f"job '{job_id}' is still {status_.value} after "
                                       f"{timeout:g} s")
        time.sleep(0.1)  # polling the head, with a deadline
    click.echo(f"Job '{job_id}' is {status_.value}.")


@job.command("list")
@_cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(address, token, as_json) -> None:
    """List the cluster's jobs, oldest first."""
    jobs = _call(_client(address, token).list_jobs)
    if as_json:
        click.echo(json.dumps([j.to_dict() for j in jobs], indent=2))
        return
    if not jobs:
        click.echo("no jobs")
        return
    click.echo(f"{'SUBMISSION ID':<32} {'STATUS':<10} {'STARTED':<20} ENTRYPOINT")
    for j in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000))
        click.echo(f"{j.submission_id:<32} {j.status.value:<10} {started:<20} {j.entrypoint}")


@job.command()
@_cluster_options
@click.argument("job_id")
def delete(address, token, job_id) -> None:
    """Forget an ended job and its log."""
    _call(_client(address, token).delete_job, job_id)
    click.echo(f"Job '{job_id}' deleted.")
