"""The records of job submission: a client holding the cluster token <-> the head.

::

    zray job / JobSubmissionClient ──DEALER (tcp + CURVE)──▶ head ROUTER
        JOB_SUBMIT [archive]     ──▶  JOB_REPLY {submission_id}
        JOB_INFO / JOB_STOP / JOB_DELETE {submission_id}  ──▶  JOB_REPLY
        JOB_LOGS {submission_id, offset, length}  ──▶  JOB_REPLY {offset, size, status} [bytes]
        JOB_LIST                 ──▶  JOB_REPLY {jobs}

A job is code the head runs, so these ops travel only on the head's
authenticated ROUTER.  The working_dir archive and log bytes are raw frames,
never msgpack.  A refused or failed request is answered with ``error``.
"""

from __future__ import annotations

import enum
from typing import Any, Dict, List, TypedDict


class JobStatus(str, enum.Enum):
    """A job's state (Ray's names, and the values on the wire): PENDING until its
    entrypoint starts, RUNNING, then SUCCEEDED, FAILED or STOPPED for good."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        """Whether the job has ended (it will not change state again)."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


class JobSubmitRequired(TypedDict):
    req: int
    entrypoint: str          # a shell command line, run on the head's machine
    submission_id: str       # "": the head names the job


class JobSubmit(JobSubmitRequired, total=False):
    """JOB_SUBMIT; with ``package`` (the sha256 hex of the zip archive of the job's
    working_dir), raw[0] is that archive."""
    runtime_env: Dict[str, Any]
    metadata: Dict[str, str]
    package: str


class JobRef(TypedDict):
    """JOB_INFO, JOB_STOP and JOB_DELETE."""
    req: int
    submission_id: str


class JobLogs(JobRef, total=False):
    """JOB_LOGS: the job's output from byte ``offset`` on, at most ``length`` bytes."""
    offset: int
    length: int


class JobList(TypedDict):
    req: int


class JobInfo(TypedDict, total=False):
    """One job as the head keeps it (times in milliseconds since the epoch)."""
    submission_id: str
    status: str              # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    entrypoint: str
    message: str
    start_time: int
    end_time: int
    metadata: Dict[str, str]
    runtime_env: Dict[str, Any]
    driver_exit_code: int
    driver_pid: int
    log_path: str


class JobReply(TypedDict, total=False):
    """The answer to every job op; JOB_LOGS' bytes follow as raw[0]."""
    req: int
    error: str
    submission_id: str
    job: JobInfo
    jobs: List[JobInfo]
    stopped: bool            # JOB_STOP: a stop was sent (False: it had ended already)
    deleted: bool
    offset: int              # JOB_LOGS: where the next read starts ...
    size: int                # ... and how long the log is now
    status: str              # JOB_LOGS: the job's status when it was read


__all__ = ["JobStatus", "JobSubmit", "JobRef", "JobLogs", "JobList", "JobInfo", "JobReply"]
