"""Job submission on a real cluster: `zray job ...` and JobSubmissionClient.

One cluster (`zray head`) serves the module; the test of the head's shutdown
starts its own.  Scripts that must stay running wait for a file the test
creates, or are stopped; nothing here waits by sleeping.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

from clusters import Cluster, free_port, running
from waiting import eventually, wait_pid_gone

from zray._private import head_jobs, protocol
from zray.job_submission import JobInfo, JobStatus, JobSubmissionClient

pytestmark = pytest.mark.timeout(120)

DRIVER = """\
import os
import zray

context = zray.init()
print("address", context.address_info["address"])

@zray.remote
def square(x):
    return x * x

print("squares", zray.get([square.remote(i) for i in range(6)]))
print("greeting", os.environ.get("GREETING"))
print("runtime_env", os.environ.get("ZRAY_JOB_RUNTIME_ENV"))
"""

# Runs until the test creates its "go" file (or a minute passes: then it fails).
WAITS_FOR_GO = """\
import os, sys, time
print("started", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]):
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.05)
print("done", flush=True)
"""

# Starts a child in its process group, prints both pids, then waits for ever.
LONG = """\
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("pids", os.getpid(), child.pid, flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def cluster():
    with running("zjob", ["--num-cpus", "2", "--no-dashboard"], [], cpus=2) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with JobSubmissionClient(cluster.address, cluster.token) as c:
        yield c


def script(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def until_status(client, job_id, wanted, within=60.0):
    assert eventually(lambda: client.get_job_status(job_id) in wanted, within), \
        f"job {job_id} is {client.get_job_status(job_id)}, not {wanted}"
    return client.get_job_status(job_id)


def pids_printed(client, job_id):
    """The pids a LONG job printed (the entrypoint's python, its child)."""
    assert eventually(lambda: "pids" in client.get_job_logs(job_id), 30), \
        client.get_job_logs(job_id)
    line = next(x for x in client.get_job_logs(job_id).splitlines() if x.startswith("pids"))
    return [int(p) for p in line.split()[1:]]


# --------------------------------------------------------------------------- the CLI
def test_submit_runs_a_driver_of_the_cluster_and_streams_its_output(cluster, tmp_path):
    env_json = json.dumps({"env_vars": {"GREETING": "hello"}})
    out = cluster.zray("job", "submit", "--submission-id", "cli-driver", "--runtime-env-json",
                       env_json, "--", "python", script(tmp_path, "driver.py", DRIVER))
    assert "squares [0, 1, 4, 9, 16, 25]" in out.stdout
    assert f"address {cluster.address}" in out.stdout      # the cluster, not a local session
    assert "greeting hello" in out.stdout
    runtime_env = json.loads(out.stdout.split("runtime_env ")[1].splitlines()[0])
    assert runtime_env["env_vars"] == {"GREETING": "hello"}
    assert "succeeded" in out.stderr
    status = cluster.zray("job", "status", "cli-driver").stdout
    assert "SUCCEEDED" in status
    logs = cluster.zray("job", "logs", "cli-driver").stdout
    assert "squares [0, 1, 4, 9, 16, 25]" in logs   # kept after the job ended


def test_init_auto_inside_a_job_joins_the_cluster(cluster, client):
    code = "import zray; c = zray.init(address='auto'); print('at', c.address_info['address'])"
    job = client.submit_job(entrypoint=f'python -c "{code}"')
    assert until_status(client, job, {JobStatus.SUCCEEDED, JobStatus.FAILED}) == \
        JobStatus.SUCCEEDED, client.get_job_logs(job)
    assert f"at {cluster.address}" in client.get_job_logs(job)


def test_no_wait_then_status_logs_and_follow(cluster, client, tmp_path):
    go = tmp_path / "go"
    out = cluster.zray("job", "submit", "--no-wait", "--", "python",
                       script(tmp_path, "waits.py", WAITS_FOR_GO), str(go))
    job_id = out.stdout.strip().splitlines()[-1]
    assert f"zray job logs --follow {job_id}" in out.stderr
    until_status(client, job_id, {JobStatus.RUNNING})
    assert "RUNNING" in cluster.zray("job", "status", job_id).stdout
    assert eventually(lambda: "started" in cluster.zray("job", "logs", job_id).stdout, 30)
    follower = subprocess.Popen([sys.executable, "-m", "zray.cli", "job", "logs", "--follow",
                                 job_id], env=cluster.env, stdout=subprocess.PIPE, text=True)
    try:
        go.touch()
        followed, _ = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0
    assert "started" in followed and "done" in followed
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED


def test_a_failing_script_fails_the_job_and_the_command(cluster, client):
    code = "import sys; print('about to fail'); sys.exit(3)"
    out = cluster.zray("job", "submit", "--submission-id", "fails", "--", "python", "-c",
                       code, check=False)
    assert out.returncode != 0
    assert "about to fail" in out.stdout
    assert "failed" in out.stderr
    info = client.get_job_info("fails")
    assert info.status == JobStatus.FAILED
    assert info.driver_exit_code == 3 and "3" in info.message
    assert "FAILED" in cluster.zray("job", "status", "fails").stdout


def test_stop_ends_the_job_and_its_process_group(cluster, client, tmp_path):
    long = script(tmp_path, "long.py", LONG)
    job_id = client.submit_job(entrypoint=f"python {long}", submission_id="long-one")
    pids = pids_printed(client, job_id)
    out = cluster.zray("job", "stop", job_id)
    assert "STOPPED" in out.stdout
    assert client.get_job_status(job_id) == JobStatus.STOPPED
    for pid in pids:
        wait_pid_gone(pid)
    assert "had already ended" in cluster.zray("job", "stop", job_id).stdout


def test_a_job_that_ignores_sigterm_is_killed(cluster, client, tmp_path):
    long = script(tmp_path, "long.py", LONG)
    job_id = client.submit_job(entrypoint=f"python {long} --ignore-term")
    pids = pids_printed(client, job_id)
    assert client.stop_job(job_id) is True
    until_status(client, job_id, {JobStatus.STOPPED})
    for pid in pids:
        wait_pid_gone(pid)


def test_list_shows_every_job_with_its_status(cluster, client):
    job_id = client.submit_job(entrypoint="echo listed", submission_id="listed")
    until_status(client, job_id, {JobStatus.SUCCEEDED})
    table = cluster.zray("job", "list").stdout
    row = next(line for line in table.splitlines() if line.startswith("listed "))
    assert "SUCCEEDED" in row and "echo listed" in row
    rows = json.loads(cluster.zray("job", "list", "--json").stdout)
    assert {"submission_id": "listed", "status": "SUCCEEDED"}.items() <= \
        next(r for r in rows if r["submission_id"] == "listed").items()
    assert "listed" in [j.submission_id for j in client.list_jobs()]


def test_working_dir_is_shipped_and_the_job_runs_in_it(cluster, client, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "helper_for_job.py").write_text("VALUE = 'from the helper'\n")
    (project / "main.py").write_text(textwrap.dedent("""\
        import os, sys
        import helper_for_job
        import zray
        print("driver:", helper_for_job.VALUE)
        print("cwd:", os.getcwd())
        print("has main:", os.path.exists("main.py"))
        zray.init()

        @zray.remote
        def use_helper():
            import helper_for_job
            return helper_for_job.VALUE

        print("worker:", zray.get(use_helper.remote()))
        """))
    args = ["python", "main.py"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-m", "zray.cli", "job", "submit", "--working-dir",
                          str(project), "--", *args], env=cluster.env, cwd=str(elsewhere),
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "driver: from the helper" in out.stdout
    assert "has main: True" in out.stdout
    cwd = out.stdout.split("cwd: ")[1].splitlines()[0]
    assert cwd != str(project) and "runtime_resources" in cwd   # unpacked on the head's side
    assert "worker: from the helper" in out.stdout                # the workers have it too


def test_a_missing_working_dir_is_refused_before_anything_runs(cluster):
    out = cluster.zray("job", "submit", "--working-dir", "/nonexistent/folder", "--",
                       "echo", "never", check=False)
    assert out.returncode != 0 and "does not exist" in out.stderr


def test_unknown_job_ids_get_a_clear_error(cluster, client):
    for command in (["status"], ["logs"], ["stop"], ["logs", "--follow"], ["delete"]):
        out = cluster.zray("job", *command, "no-such-job", check=False)
        assert out.returncode != 0
        assert "no job with submission_id 'no-such-job'" in out.stderr, out.stderr
    with pytest.raises(RuntimeError, match="no job with submission_id"):
        client.get_job_status("no-such-job")


def test_nothing_to_talk_to_is_a_clear_error(cluster):
    out = cluster.zray("job", "list", "--address", f"127.0.0.1:{free_port()}",
                       "--token", cluster.token, check=False)
    assert out.returncode != 0 and "nothing answers" in out.stderr
    nowhere = tempfile.mkdtemp(prefix="zje", dir="/tmp")   # no node records in it
    try:
        out = subprocess.run([sys.executable, "-m", "zray.cli", "job", "list"],
                             env=dict(cluster.env, ZRAY_TMPDIR=nowhere),
                             capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(nowhere, ignore_errors=True)
    assert out.returncode != 0 and "no zray node is running on this machine" in out.stderr
    with pytest.raises(ValueError, match="dashboard"):
        JobSubmissionClient("http://127.0.0.1:8265", cluster.token)


def test_a_wrong_token_is_refused_and_nothing_runs(cluster, client, tmp_path):
    from zray._private import security

    marker = tmp_path / "ran"
    before = len(client.list_jobs())
    wrong = security.new_token()
    out = cluster.zray("job", "submit", "--token", wrong, "--", "touch", str(marker),
                       check=False)
    assert out.returncode != 0 and "token is wrong" in out.stderr
    with pytest.raises(ConnectionError, match="token is wrong"):
        JobSubmissionClient(cluster.address, wrong)
    assert len(client.list_jobs()) == before
    assert not marker.exists()


# --------------------------------------------------------------------------- the client
def test_client_submit_status_info_logs_and_delete(cluster, client):
    job_id = client.submit_job(entrypoint="echo from-the-client; echo to-stderr >&2",
                               metadata={"owner": "tests"})
    assert job_id.startswith("zraysubmit_")
    assert "".join(client.tail_job_logs_sync(job_id)).split() == ["from-the-client",
                                                                  "to-stderr"]
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED
    assert JobStatus.SUCCEEDED.is_terminal() and not JobStatus.RUNNING.is_terminal()
    info = client.get_job_info(job_id)
    assert isinstance(info, JobInfo)
    assert info.entrypoint.startswith("echo from-the-client")
    assert info.metadata == {"owner": "tests"}
    assert info.driver_exit_code == 0 and info.start_time <= info.end_time
    assert "from-the-client" in client.get_job_logs(job_id)
    with pytest.raises(RuntimeError, match="already exists"):
        client.submit_job(entrypoint="echo again", submission_id=job_id)
    assert client.delete_job(job_id) is True
    with pytest.raises(RuntimeError, match="no job"):
        client.get_job_info(job_id)


def test_client_async_tail_and_stop(cluster, client, tmp_path):
    long = script(tmp_path, "long.py", LONG)
    job_id = client.submit_job(entrypoint=f"python {long}")
    pids = pids_printed(client, job_id)
    with pytest.raises(RuntimeError, match="stop it before"):
        client.delete_job(job_id)

    async def tail():
        seen = ""
        async for text in client.tail_job_logs(job_id):
            if "pids" in text:  # everything it prints comes before the stop
                assert client.stop_job(job_id) is True
            seen += text
        return seen

    assert "pids" in asyncio.run(asyncio.wait_for(tail(), 60))
    assert client.get_job_status(job_id) == JobStatus.STOPPED
    assert client.stop_job(job_id) is False
    for pid in pids:
        wait_pid_gone(pid)


def test_bad_requests_get_error_replies(client):
    with pytest.raises(TypeError):
        client.submit_job(entrypoint=["python", "x.py"])
    with pytest.raises(RuntimeError, match="entrypoint: expected str"):
        client.channel.ask(protocol.Op.JOB_SUBMIT, {"entrypoint": 7, "submission_id": ""})
    with pytest.raises(RuntimeError, match="submission_id"):
        client.submit_job(entrypoint="echo x", submission_id="../escape")
    with pytest.raises(RuntimeError, match="empty"):
        client.submit_job(entrypoint="   ")
    with pytest.raises(RuntimeError, match="env_vars"):
        client.submit_job(entrypoint="echo x", runtime_env={"env_vars": {"A": 1}})


# --------------------------------------------------------------------------- shutdown
def test_stopping_the_cluster_stops_its_jobs(tmp_path):
    tmpdir = os.path.join("/tmp", f"zjs{os.getpid()}")
    os.makedirs(tmpdir)
    c = Cluster(tmpdir)
    try:
        out = c.zray("head", "--port", str(c.port), "--num-cpus", "1", "--no-dashboard")
        token = out.stdout.split("token: ")[1].split()[0]
        with JobSubmissionClient(c.address, token) as jobs:
            job_id = jobs.submit_job(entrypoint=f"python {script(tmp_path, 'l.py', LONG)}")
            pids = pids_printed(jobs, job_id)
            until_status(jobs, job_id, {JobStatus.RUNNING})
            driver = jobs.get_job_info(job_id).driver_pid
        supervisors = [p.pid for p in psutil.Process(driver).parents()
                       if "job_supervisor" in " ".join(p.cmdline())]
        assert supervisors, "the job's driver has no supervisor"
        assert "ZRAY_JOB_SUBMISSION_ID" in psutil.Process(pids[0]).environ()
        c.zray("stop")
        for pid in pids + supervisors + [driver]:
            wait_pid_gone(pid)
    finally:
        c.zray("stop", check=False)
        shutil.rmtree(tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------- the head's table
def manager(tmp_path):
    replies = []
    jobs = head_jobs.JobManager(lambda ident, op, body, *raw: replies.append(body) or True,
                                ["tcp://127.0.0.1:1"], "token")
    jobs.start(str(tmp_path))
    return jobs, replies


def ended(jobs, job_id):
    def check():
        jobs.poll(time.monotonic() + 1)  # past its rate limit
        return jobs.jobs[job_id].status.is_terminal()
    return eventually(check, 30)


def test_the_head_keeps_a_bounded_number_of_job_records(tmp_path, monkeypatch):
    monkeypatch.setattr(head_jobs, "MAX_JOBS", 3)
    jobs, replies = manager(tmp_path)
    try:
        for i in range(5):
            jobs.on_submit(b"c", {"req": i, "entrypoint": "echo hi", "submission_id": f"j{i}"},
                           [])
            assert ended(jobs, f"j{i}")
        assert list(jobs.jobs) == ["j2", "j3", "j4"]
        assert not (tmp_path / "logs" / "job-j0.log").exists()
        assert (tmp_path / "logs" / "job-j4.log").read_text() == "hi\n"
        for i in range(3):  # three that run until stopped: no room for a fourth
            jobs.on_submit(b"c", {"req": 10 + i, "entrypoint": "sleep 60",
                                  "submission_id": f"w{i}"}, [])
        jobs.on_submit(b"c", {"req": 20, "entrypoint": "echo x", "submission_id": "one-more"},
                       [])
        assert "running or pending" in replies[-1]["error"]
    finally:
        jobs.stop_all()
    assert all(j.status is JobStatus.STOPPED for k, j in jobs.jobs.items() if k[0] == "w")


def test_a_package_that_does_not_match_its_hash_fails_the_job(tmp_path):
    jobs, replies = manager(tmp_path)
    jobs.on_submit(b"c", {"req": 1, "entrypoint": "echo never", "submission_id": "bad-pkg",
                          "package": "0" * 64, "runtime_env": {"working_dir": "x"}}, [b"junk"])
    assert replies[-1]["submission_id"] == "bad-pkg"
    assert ended(jobs, "bad-pkg")
    job = jobs.jobs["bad-pkg"]
    assert job.status is JobStatus.FAILED and "do not match" in job.message
    assert "never" not in (tmp_path / "logs" / "job-bad-pkg.log").read_text()


def test_a_head_without_a_session_takes_no_jobs():
    replies = []
    jobs = head_jobs.JobManager(lambda ident, op, body, *raw: replies.append(body) or True,
                                ["ipc:///somewhere"], None)
    jobs.start("/tmp")
    jobs.on_submit(b"c", {"req": 1, "entrypoint": "echo no", "submission_id": ""}, [])
    assert "runs no jobs" in replies[-1]["error"] and not jobs.jobs


def test_job_messages_are_declared_and_checked(tmp_path):
    from zray._private import validate

    jobs, replies = manager(tmp_path)
    sent = []
    jobs.reply = lambda ident, op, body, *raw: sent.append((op, body, raw)) or True
    jobs.on_submit(b"c", {"req": 1, "entrypoint": "echo checked", "submission_id": "chk",
                          "metadata": {"a": "b"}, "runtime_env": {"env_vars": {"X": "1"}}}, [])
    assert ended(jobs, "chk")
    for handler, body in [(jobs.on_info, {}), (jobs.on_logs, {"offset": 0}),
                          (jobs.on_list, {}), (jobs.on_stop, {}), (jobs.on_delete, {})]:
        handler(b"c", dict(body, req=2, submission_id="chk"), [])
    jobs.on_info(b"c", {"req": 3, "submission_id": "gone"}, [])
    for op, body, raw in sent:   # what the head answers is what the protocol declares
        validate.check(op, body, raw)
    assert [op for op, _, _ in sent] == [protocol.Op.JOB_REPLY] * 7
    assert sent[2][2] == (b"checked\n",) and sent[2][1]["status"] == "SUCCEEDED"
    assert "no job" in sent[-1][1]["error"]
    for op, body, raw, wrong in [
            (protocol.Op.JOB_SUBMIT, {"req": 1, "entrypoint": "x", "submission_id": "",
                                      "package": "0" * 64}, [b"a", b"b"], "frames"),
            (protocol.Op.JOB_SUBMIT, {"req": 1, "entrypoint": "x", "submission_id": "",
                                      "metadata": {"a": 1}}, [], "metadata.a"),
            (protocol.Op.JOB_LOGS, {"req": 1, "submission_id": "x", "offset": -1}, [], "offset"),
            (protocol.Op.JOB_INFO, {"req": 1}, [], "submission_id")]:
        with pytest.raises(protocol.ProtocolError, match=wrong):
            validate.check(op, body, raw)
