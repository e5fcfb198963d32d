"""What a job is, as the client reads it: its status (Ray's names) and its record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from zray._private.protocol import JobStatus

__all__ = ["JobStatus", "JobInfo", "JobDetails"]


@dataclass
class JobInfo:
    """One job: times are milliseconds since the epoch, as in Ray."""

    submission_id: str
    status: JobStatus
    entrypoint: str
    message: str = ""
    start_time: Optional[int] = None
    end_time: Optional[int] = None
    metadata: Dict[str, str] = field(default_factory=dict)
    runtime_env: Dict[str, Any] = field(default_factory=dict)
    driver_exit_code: Optional[int] = None
    driver_pid: Optional[int] = None
    log_path: str = ""   # the job's log file, on the head's machine

    @classmethod
    def from_wire(cls, row: dict) -> "JobInfo":
        return cls(submission_id=row.get("submission_id", ""),
                   status=JobStatus(row.get("status", "PENDING")),
                   entrypoint=row.get("entrypoint", ""), message=row.get("message", ""),
                   start_time=row.get("start_time"), end_time=row.get("end_time"),
                   metadata=dict(row.get("metadata", {})),
                   runtime_env=dict(row.get("runtime_env", {})),
                   driver_exit_code=row.get("driver_exit_code"),
                   driver_pid=row.get("driver_pid"), log_path=row.get("log_path", ""))

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["status"] = self.status.value
        return out


#: Ray's name for a listed job.
JobDetails = JobInfo
