"""Submitted jobs, kept by the head: each an entrypoint run as a driver on the head's machine.

::

    client ──JOB_SUBMIT [archive]──▶ head ──Popen──▶ job_supervisor ──▶ sh -c ENTRYPOINT
                                      │  (never waits: poll() reads exits, timer pass)
    <session>/jobs/<id>/  spec.json, package.zip, driver.pid, result.json
    <session>/logs/job-<id>.log       everything the job printed (it outlives the job)
    <session>/runtime_resources/working_dir/<sha256>/   unpacked working dirs

Only a head started by ``zray head`` (TCP, CURVE, a session folder) runs jobs:
the ops arrive on its authenticated ROUTER, and nowhere else.  A job is
PENDING until its supervisor has started the entrypoint, RUNNING until it
ends, then SUCCEEDED, FAILED or STOPPED.  The driver finds the cluster
through ``ZRAY_ADDRESS``; its runtime_env (working_dir made local) is in
``ZRAY_JOB_RUNTIME_ENV``.  At most ``MAX_JOBS`` records are kept: the oldest
ended ones (and their logs) go first.

Owns: the job table and the files above.  Must not: block the head's loop on a
job (no waits but at shutdown), or touch the head's other tables.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from zray._private.job_supervisor import STOP_GRACE
from zray._private.protocol import JobStatus, Op

logger = logging.getLogger("zray.head.jobs")

MAX_JOBS = int(os.environ.get("ZRAY_MAX_JOB_RECORDS", 1000))
MAX_LOG_READ = 1 << 20          # bytes of output one JOB_LOGS answer carries at most
POLL_INTERVAL = 0.1             # seconds between looks at the jobs' processes
SUBMISSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


class JobError(ValueError):
    """A request the head refuses; the message goes back to the asker."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Job:
    """One submitted job; ``proc`` is its supervisor."""

    def __init__(self, submission_id: str, entrypoint: str, runtime_env: Dict[str, Any],
                 metadata: Dict[str, str], job_dir: str, log_path: str) -> None:
        self.submission_id = submission_id
        self.entrypoint = entrypoint
        self.runtime_env = runtime_env
        self.metadata = metadata
        self.job_dir = job_dir
        self.log_path = log_path
        self.status = JobStatus.PENDING
        self.message = "Job is waiting for its entrypoint to start."
        self.start_time = now_ms()
        self.end_time = 0
        self.exit_code: Optional[int] = None
        self.driver_pid = 0
        self.proc: Optional[subprocess.Popen] = None
        self.stop_deadline = 0.0     # set by a stop: the supervisor is killed after it

    def info(self) -> dict:
        out = {"submission_id": self.submission_id, "status": self.status.value,
               "entrypoint": self.entrypoint, "message": self.message,
               "start_time": self.start_time, "metadata": self.metadata,
               "runtime_env": self.runtime_env, "log_path": self.log_path}
        if self.end_time:
            out["end_time"] = self.end_time
        if self.exit_code is not None:
            out["driver_exit_code"] = self.exit_code
        if self.driver_pid:
            out["driver_pid"] = self.driver_pid
        return out


def cluster_address(addresses: List[str]) -> str:
    """HOST:PORT of the head's TCP ROUTER, as a driver on this machine connects to it."""
    for address in addresses:
        if address.startswith("tcp://"):
            host, _, port = address[len("tcp://"):].rpartition(":")
            return f"{'127.0.0.1' if host in ('0.0.0.0', '*', '') else host}:{port}"
    return ""


def check_runtime_env(runtime_env: Any, package: str, frames: int) -> Dict[str, Any]:
    if not isinstance(runtime_env, dict):
        raise JobError("runtime_env must be a map")
    env_vars = runtime_env.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise JobError("runtime_env env_vars must map names to str values")
    if package:
        if not re.fullmatch(r"[0-9a-f]{64}", package) or frames != 1:
            raise JobError("a working_dir package is named by its sha256 and sent as one frame")
    elif "working_dir" in runtime_env:
        raise JobError("runtime_env working_dir must be sent with the job (the client packs "
                       "the folder)")
    return dict(runtime_env)


class JobManager:
    """The job table and its verbs (submit, info, logs, stop, list, delete) and ``poll``.

    Built without I/O; :meth:`start` names the session folder and enables jobs.
    ``reply(ident, op, body, *raw)`` answers an asker (the head's); the job ops'
    handlers are added to ``handlers`` (the head's table), if given.
    """

    def __init__(self, reply: Callable[..., bool], addresses: List[str],
                 token: Optional[str], handlers: Optional[Dict[Op, Callable]] = None) -> None:
        self.reply = reply
        self.address = cluster_address(addresses)
        self.token = token
        self.session_dir = ""
        self.jobs: Dict[str, Job] = {}   # in submission order
        self.next_poll = 0.0
        if handlers is not None:
            handlers.update(self.handlers())

    def start(self, session_dir: str) -> None:
        """Run jobs from now on, with their files in ``session_dir`` (a TCP cluster's head)."""
        if session_dir and self.token and self.address:
            self.session_dir = session_dir
            os.makedirs(os.path.join(session_dir, "jobs"), mode=0o700, exist_ok=True)
            os.makedirs(os.path.join(session_dir, "logs"), exist_ok=True)

    def handlers(self) -> Dict[Op, Callable]:
        return {Op.JOB_SUBMIT: self.on_submit, Op.JOB_INFO: self.on_info,
                Op.JOB_LOGS: self.on_logs, Op.JOB_STOP: self.on_stop,
                Op.JOB_LIST: self.on_list, Op.JOB_DELETE: self.on_delete}

    # ------------------------------------------------------------------ requests
    def answer(self, ident: bytes, body: dict, verb: Callable[..., dict], *args: Any) -> None:
        """Run ``verb`` and reply with what it returns, or with the error it raised."""
        try:
            if not self.session_dir:
                raise JobError("this head runs no jobs: jobs need a cluster started with "
                               "`zray head` (a local zray.init() session takes none)")
            reply, raw = verb(*args), ()
            if isinstance(reply, tuple):
                reply, raw = reply
        except JobError as exc:
            reply, raw = {"error": str(exc)}, ()
        self.reply(ident, Op.JOB_REPLY, dict(reply, req=body["req"]), *raw)

    def on_submit(self, ident: bytes, body: dict, raw: list) -> None:
        self.answer(ident, body, self.submit, body, raw)

    def on_info(self, ident: bytes, body: dict, raw: list) -> None:
        self.answer(ident, body, lambda: {"job": self.find(body["submission_id"]).info()})

    def on_logs(self, ident: bytes, body: dict, raw: list) -> None:
        self.answer(ident, body, self.logs, body["submission_id"], body.get("offset", 0),
                    body.get("length", MAX_LOG_READ))

    def on_stop(self, ident: bytes, body: dict, raw: list) -> None:
        self.answer(ident, body, lambda: {"stopped": self.stop(body["submission_id"])})

    def on_list(self, ident: bytes, body: dict, raw: list) -> None:
        self.answer(ident, body, lambda: {"jobs": [j.info() for j in self.jobs.values()]})

    def on_delete(self, ident: bytes, body: dict, raw: list) -> None:
        self.answer(ident, body, lambda: {"deleted": self.delete(body["submission_id"])})

    def find(self, submission_id: str) -> Job:
        job = self.jobs.get(submission_id)
        if job is None:
            raise JobError(f"no job with submission_id {submission_id!r} on this cluster")
        return job

    # ------------------------------------------------------------------ verbs
    def submit(self, body: dict, raw: list) -> dict:
        entrypoint = body["entrypoint"]
        if not entrypoint.strip():
            raise JobError("the entrypoint is empty")
        sid = body["submission_id"] or f"zraysubmit_{os.urandom(8).hex()}"
        if not SUBMISSION_ID.match(sid):
            raise JobError(f"submission_id {sid!r}: use letters, digits, '_', '.' and '-' "
                           f"(at most 128)")
        if sid in self.jobs:
            raise JobError(f"a job with submission_id {sid!r} already exists")
        package = body.get("package", "")
        runtime_env = check_runtime_env(body.get("runtime_env", {}), package, len(raw))
        self.make_room()
        job_dir = os.path.join(self.session_dir, "jobs", sid)
        shutil.rmtree(job_dir, ignore_errors=True)  # left by a head before a restore
        os.makedirs(job_dir, mode=0o700)
        job = Job(sid, entrypoint, runtime_env, dict(body.get("metadata", {})), job_dir,
                  os.path.join(self.session_dir, "logs", f"job-{sid}.log"))
        try:
            self.launch(job, package, raw[0] if package else None)
        except (OSError, ValueError) as exc:   # ValueError: an env_vars name Popen refuses
            shutil.rmtree(job_dir, ignore_errors=True)
            raise JobError(f"the job could not start: {exc}") from None
        self.jobs[sid] = job
        logger.info("job %s submitted: %s", sid, entrypoint)
        return {"submission_id": sid}

    def launch(self, job: Job, package: str, archive: Any) -> None:
        """Write the job's files and start its supervisor (it unpacks the archive)."""
        cwd = os.getcwd()
        spec = {"entrypoint": job.entrypoint, "cwd": cwd, "head_pid": os.getpid(),
                "job_dir": job.job_dir, "grace": STOP_GRACE}
        if package:
            cache_root = os.path.join(self.session_dir, "runtime_resources", "working_dir")
            spec.update(package=package, cache_root=cache_root,
                        package_path=os.path.join(job.job_dir, "package.zip"))
            with open(spec["package_path"], "wb") as f:
                f.write(getattr(archive, "buffer", archive))
            job.runtime_env["working_dir"] = os.path.join(cache_root, package)
        spec_path = os.path.join(job.job_dir, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        env = dict(os.environ, **job.runtime_env.get("env_vars", {}))
        env.pop("ZRAY_TOKEN", None)
        env.update(ZRAY_ADDRESS=self.address, ZRAY_JOB_SUBMISSION_ID=job.submission_id,
                   ZRAY_JOB_RUNTIME_ENV=json.dumps(job.runtime_env), PYTHONUNBUFFERED="1",
                   PATH=os.pathsep.join([os.path.dirname(sys.executable),
                                         env.get("PATH", os.defpath)]))
        log = open(job.log_path, "wb")
        try:
            job.proc = subprocess.Popen(
                [sys.executable, "-m", "zray._private.job_supervisor", spec_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, close_fds=True)
        finally:
            log.close()

    def logs(self, submission_id: str, offset: int, length: int) -> tuple:
        job = self.find(submission_id)
        status = job.status.value   # read first: once ended, the log is complete
        try:
            with open(job.log_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(min(offset, size))
                data = f.read(max(0, min(length, MAX_LOG_READ, size - offset)))
        except FileNotFoundError:
            size, data = 0, b""
        return {"offset": min(offset, size) + len(data), "size": size, "status": status}, \
            (data,)

    def stop(self, submission_id: str) -> bool:
        """SIGTERM to the job's supervisor (it ends the entrypoint's group); False if
        the job had ended."""
        job = self.find(submission_id)
        if job.status.is_terminal() or job.proc is None:
            return False
        if not job.stop_deadline:
            job.stop_deadline = time.monotonic() + STOP_GRACE + 5.0
            job.proc.send_signal(signal.SIGTERM)
            logger.info("job %s: stop asked", submission_id)
        return True

    def delete(self, submission_id: str) -> bool:
        job = self.find(submission_id)
        if not job.status.is_terminal():
            raise JobError(f"job {submission_id!r} is {job.status.value}: stop it before "
                           f"deleting it")
        self.forget(job)
        return True

    def forget(self, job: Job) -> None:
        self.jobs.pop(job.submission_id, None)
        shutil.rmtree(job.job_dir, ignore_errors=True)
        try:
            os.unlink(job.log_path)
        except OSError:
            pass

    def make_room(self) -> None:
        """Keep fewer than MAX_JOBS records: the oldest ended ones go."""
        ended = [j for j in self.jobs.values() if j.status.is_terminal()]
        while len(self.jobs) >= MAX_JOBS:
            if not ended:
                raise JobError(f"{len(self.jobs)} jobs are running or pending, the most "
                               f"this head keeps")
            self.forget(ended.pop(0))

    # ------------------------------------------------------------------ the timer pass
    def poll(self, now: Optional[float] = None) -> None:
        """Note which jobs started or ended (non-blocking); kill stops that hang."""
        now = time.monotonic() if now is None else now
        if now < self.next_poll:
            return
        self.next_poll = now + POLL_INTERVAL
        for job in self.jobs.values():
            if job.status.is_terminal() or job.proc is None:
                continue
            code = job.proc.poll()
            if code is not None:
                self.finish(job, code)
                continue
            if job.status is JobStatus.PENDING:
                self.note_started(job)
            if job.stop_deadline and now > job.stop_deadline:
                logger.warning("job %s: its supervisor did not stop; killing it",
                               job.submission_id)
                self.kill(job)

    def note_started(self, job: Job) -> None:
        pid = read_json(os.path.join(job.job_dir, "driver.pid")).get("pid")
        if pid:
            job.driver_pid = pid
            job.status = JobStatus.RUNNING
            job.message = "Job is currently running."

    def finish(self, job: Job, supervisor_code: int) -> None:
        result = read_json(os.path.join(job.job_dir, "result.json"))
        if not job.driver_pid:
            self.note_started(job)
        code = result.get("returncode")
        job.exit_code = code
        job.end_time = now_ms()
        if result.get("stopped") or job.stop_deadline:
            job.status, job.message = JobStatus.STOPPED, "Job was intentionally stopped."
        elif code == 0:
            job.status, job.message = JobStatus.SUCCEEDED, "Job finished successfully."
        elif code is not None:
            job.status = JobStatus.FAILED
            job.message = f"Job entrypoint command failed with exit code {code}."
        else:
            job.status = JobStatus.FAILED
            job.message = result.get("message") or \
                f"the job's supervisor exited with code {supervisor_code}"
        logger.info("job %s %s: %s", job.submission_id, job.status.value, job.message)

    def kill(self, job: Job) -> None:
        """SIGKILL the supervisor and the entrypoint's group (a supervisor that hangs)."""
        if job.driver_pid:
            try:
                os.killpg(job.driver_pid, signal.SIGKILL)
            except OSError:
                pass
        if job.proc is not None and job.proc.poll() is None:
            job.proc.kill()

    def stop_all(self, timeout: float = STOP_GRACE + 1.5) -> None:
        """At the head's exit: stop every running job and wait (bounded) for them."""
        live = [j for j in self.jobs.values() if j.proc is not None and j.proc.poll() is None]
        deadline = time.monotonic() + timeout
        for job in live:
            job.stop_deadline = deadline
            job.proc.send_signal(signal.SIGTERM)
        for job in live:
            try:
                job.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if not job.driver_pid:
                    self.note_started(job)
                self.kill(job)
            self.finish(job, job.proc.wait())


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}
