"""Job submission (Ray's ``ray.job_submission``): run a script on a `zray head`
cluster as its driver, from any machine that holds the cluster token.

    from zray.job_submission import JobSubmissionClient, JobStatus

    client = JobSubmissionClient("127.0.0.1:6380")
    job = client.submit_job(entrypoint="python script.py",
                            runtime_env={"working_dir": "./"})
    for text in client.tail_job_logs_sync(job):
        print(text, end="")
    assert client.get_job_status(job) == JobStatus.SUCCEEDED
"""

from zray.job_submission.models import JobDetails, JobInfo, JobStatus
from zray.job_submission.sdk import JobSubmissionClient

__all__ = ["JobSubmissionClient", "JobStatus", "JobInfo", "JobDetails"]
