"""The ``zray`` command line and the microbenchmark plumbing (not its timings)."""

import concurrent.futures
import json
import os
import stat
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

import zray
from zray import cli
from zray._private import bench_queued as bq
from zray._private import bench_workloads as bw
from zray._private import microbenchmark as mb

pytestmark = pytest.mark.timeout(90)


def _records(*triples):
    return [{"name": n, "value": v, "unit": u} for n, v, u in triples]


# --------------------------------------------------------------------------- command line


def test_help_lists_microbenchmark():
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "microbenchmark" in result.output


def test_version():
    result = CliRunner().invoke(cli.main, ["--version"])
    assert result.exit_code == 0
    assert zray.__version__ in result.output


def test_microbenchmark_help():
    result = CliRunner().invoke(cli.main, ["microbenchmark", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--quick", "--compare", "--json", "--ray-python"):
        assert option in result.output


def test_compare_only_accepts_ray():
    result = CliRunner().invoke(cli.main, ["microbenchmark", "--compare", "dask"])
    assert result.exit_code != 0
    assert "dask" in result.output


def test_group_takes_more_commands():
    """Later commands (head, worker, ...) plug into the same group."""
    assert isinstance(cli.main, __import__("click").Group)
    assert "microbenchmark" in cli.main.commands


# --------------------------------------------------------------------------- ratios and table


def test_ratio_of_rates_is_zray_over_ray():
    assert mb.speed_ratio(200.0, 100.0, "tasks/s") == pytest.approx(2.0)
    assert mb.speed_ratio(50.0, 100.0, "GiB/s") == pytest.approx(0.5)


def test_ratio_of_times_is_inverted():
    # zray took 0.5 s, Ray 2 s: zray is 4x faster.
    assert mb.speed_ratio(0.5, 2.0, "s") == pytest.approx(4.0)
    assert mb.speed_ratio(300.0, 150.0, "us/task") == pytest.approx(0.5)
    assert mb.speed_ratio(2000.0, 8000.0, "B/task") == pytest.approx(4.0)  # less memory
    assert mb.lower_is_better("s") and mb.lower_is_better("us/task")
    assert mb.lower_is_better("B/task")
    assert not mb.lower_is_better("tasks/s")


def test_ratio_missing_or_zero_is_none():
    assert mb.speed_ratio(None, 1.0, "s") is None
    assert mb.speed_ratio(1.0, None, "tasks/s") is None
    assert mb.speed_ratio(0.0, 1.0, "tasks/s") is None


def test_compare_rows_joins_by_name():
    z = _records(("tasks sync", 1000.0, "tasks/s"), ("start-up", 0.5, "s"),
                 ("zray only", 1.0, "calls/s"))
    r = _records(("start-up", 3.0, "s"), ("tasks sync", 500.0, "tasks/s"),
                 ("ray only", 2.0, "calls/s"))
    rows = mb.compare_rows(z, r)
    assert [row["name"] for row in rows] == ["tasks sync", "start-up", "zray only", "ray only"]
    by = {row["name"]: row for row in rows}
    assert by["tasks sync"]["ratio"] == pytest.approx(2.0)
    assert by["start-up"]["ratio"] == pytest.approx(6.0)
    assert by["start-up"]["lower_is_better"]
    assert by["zray only"]["ray"] is None and by["zray only"]["ratio"] is None
    assert by["ray only"]["zray"] is None


def test_format_table_with_fake_numbers():
    z = _records(("tasks sync", 1234.5, "tasks/s"), ("shutdown", 0.25, "s"))
    z.append({"name": "broken", "value": None, "unit": "s", "error": "Boom: it broke"})
    r = _records(("tasks sync", 617.25, "tasks/s"), ("shutdown", 1.0, "s"),
                 ("broken", 2.0, "s"))
    text = mb.format_table(mb.compare_rows(z, r), header=["machine: test"])
    lines = text.splitlines()
    assert lines[0] == "machine: test"
    assert lines[1].split() == ["workload", "zray", "unit", "ray", "x", "faster"]
    sync = next(line for line in lines if line.startswith("tasks sync"))
    assert sync.split()[2:] == ["1,234", "tasks/s", "617", "2.00x"]
    shutdown = next(line for line in lines if line.startswith("shutdown"))
    assert shutdown.split()[1:] == ["0.25", "s", "1.00", "4.00x"]   # inverted for time
    broken = next(line for line in lines if line.startswith("broken"))
    assert broken.split()[1:] == ["error", "s", "2.00", "-"]
    assert "error: zray / broken: Boom: it broke" in text
    assert ">1 means zray is faster" in text


def test_format_table_zray_only():
    rows = mb.compare_rows(_records(("tasks async", 5000.0, "tasks/s")))
    text = mb.format_table(rows, compare=False)
    assert "x faster" not in text and "ray" not in text.splitlines()[0].split()
    assert "5,000" in text


def test_format_value():
    assert mb.format_value(123456.7) == "123,457"
    assert mb.format_value(123.4) == "123"
    assert mb.format_value(12.34) == "12.3"
    assert mb.format_value(1.234) == "1.23"
    assert mb.format_value(0.012345) == "0.0123"
    assert mb.format_value(None) == "-"
    assert mb.format_value(None, "oops") == "error"


def test_machine_line():
    line = mb.machine_line({"cpus": 2, "cpu_model": "Fake CPU", "mem_gib": 8.0,
                            "system": "Linux x", "python": "3.11.7"},
                           {"zray": "0.1.0", "ray": "2.60.0"})
    assert line.startswith("machine: 2 CPUs (Fake CPU)")
    assert "Python 3.11.7" in line and "ray 2.60.0" in line
    machine = bw.describe_machine()
    assert machine["cpus"] == os.cpu_count() and machine["python"]


# --------------------------------------------------------------------------- child results


def test_parse_child_output_takes_the_marker_line():
    doc = {"target": "ray", "version": "2.60.0", "results": _records(("x", 1.0, "s"))}
    stdout = ("2026 INFO worker.py -- Started a local Ray instance.\n"
              + bw.RESULT_MARKER + json.dumps({"results": []}) + "\n"
              + bw.RESULT_MARKER + json.dumps(doc) + "\n"
              + "trailing noise\n")
    assert mb.parse_child_output(stdout) == doc


@pytest.mark.parametrize("stdout", ["", "no marker here\n",
                                    bw.RESULT_MARKER + json.dumps({"target": "zray"}) + "\n"])
def test_parse_child_output_rejects_bad_output(stdout):
    with pytest.raises(ValueError):
        mb.parse_child_output(stdout)


def test_parse_child_output_rejects_bad_json():
    with pytest.raises(ValueError):
        mb.parse_child_output(bw.RESULT_MARKER + "{not json\n")


def test_child_commands():
    cmd = mb.child_command("zray", "quick", 2)
    assert cmd[1:3] == ["-m", "zray._private.microbenchmark"]
    assert cmd[3:] == ["--target", "zray", "--json", "--num-cpus", "2", "--quick"]
    cmd = mb.child_command("ray", "full", 2, "/opt/ray/bin/python")
    assert cmd[0] == "/opt/ray/bin/python" and cmd[1] == "-c"
    assert cmd[3] == os.path.abspath(bw.__file__)    # loaded by path: no zray needed there
    assert "--quick" not in cmd and cmd[4:6] == ["--target", "ray"]


def test_ray_side_loader_needs_no_zray(tmp_path):
    """The Ray child's loader loads the workload file by path; it finds bench_queued
    beside it, and neither imports zray (the Ray environment has none)."""
    check = ("assert 'zray' not in sys.modules and 'zray._private' not in sys.modules\n"
             "assert mod.bq.__name__ == 'zray_bench_queued', mod.bq.__name__\n"
             "print(len(mod.workload_names(mod.SMOKE)))\n")
    loader = mb._LOADER.replace("sys.exit(mod.main(sys.argv[2:]))\n", check)
    assert loader != mb._LOADER
    proc = subprocess.run([sys.executable, "-I", "-c", loader, os.path.abspath(bw.__file__)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(bw.workload_names(bw.SMOKE))


def test_init_kwargs_only_quiets_ray():
    assert bw.init_kwargs("zray", 2) == {"num_cpus": 2}
    assert bw.init_kwargs("ray", 2) == {"num_cpus": 2, "include_dashboard": False,
                                        "log_to_driver": False}


def test_workload_names_cover_the_brief():
    names = bw.workload_names(bw.QUICK)
    assert "put 100 MiB array" in names and "get 100 MiB array" in names
    assert "tasks with 10 MiB ref arg" in names and "tree reduce 256 x 1 MB" in names
    assert names[-8:] == ["scaling: tasks async n=1,000", "scaling: tasks async n=10,000",
                          "shutdown", "memory per queued task (n=100,000)",
                          "submit while queueing (n=100,000)",
                          "shutdown with 100,000 tasks queued",
                          "put 100 MiB array, first touch",
                          "get 100 MiB array from another node"]
    full = bw.workload_names(bw.FULL)
    assert "scaling: tasks async n=100,000" in full
    assert "memory per queued task (n=1,000,000)" in full
    assert bw.SMOKE.queued_tasks < bw.QUICK.queued_tasks < bw.FULL.queued_tasks
    assert len(set(names)) == len(names)


# --------------------------------------------------------------------------- queued tasks


def test_rss_growth_counts_processes_that_come_and_go():
    before = {1: ("driver", 100), 2: ("node", 50), 3: ("ray::IDLE", 30)}
    after = {1: ("driver", 300), 2: ("node", 150), 4: ("ray::blocker", 40)}
    total, by_role = bq.rss_growth(before, after)
    assert total == 200 + 100 - 30 + 40
    assert by_role == {"driver": 200, "node": 100, "ray::IDLE": -30, "ray::blocker": 40}


def test_process_tree_rss_includes_children():
    gate = bq._Gate()
    child = None
    try:
        child = _blocker_process(gate)
        gate.wait_ready(1, timeout=30)
        tree = bq.process_tree_rss()
        assert tree[os.getpid()][0] == "driver"
        assert child.pid in tree and tree[child.pid][1] > 0
        assert child.poll() is None            # held by the gate ...
    finally:
        gate.close()                           # ... until it opens
        if child is not None:
            assert child.wait(timeout=30) == 0


def _blocker_process(gate):
    """A process doing what the blocker task does (the gate is not tied to a cluster)."""
    code = ("import fcntl, os, sys\n"
            "with open(sys.argv[2], 'rb') as lock:\n"
            "    fd = os.open(sys.argv[1], os.O_WRONLY); os.write(fd, b'.'); os.close(fd)\n"
            "    fcntl.flock(lock, fcntl.LOCK_SH)\n")
    return subprocess.Popen([sys.executable, "-c", code, gate.ready_path, gate.lock_path])


class _FakeRay:
    """A Ray-like module on threads: ``num_cpus`` threads run tasks one at a time,
    so tasks queue behind blockers as they do in a cluster; actors get a thread
    each.  Enough for ``measure_queued``'s plumbing, with no cluster."""

    __name__ = "fake_ray"

    def __init__(self, fail_init=False):
        self.fail_init = fail_init
        self.ran = []
        self.calls = []

    def init(self, num_cpus, **_):
        if self.fail_init:
            raise RuntimeError("no cluster today")
        self.calls.append("init")
        self.cpus = concurrent.futures.ThreadPoolExecutor(num_cpus)

    def shutdown(self):
        self.calls.append("shutdown")
        self.ran_at_shutdown = list(self.ran)
        self.cpus.shutdown(wait=False, cancel_futures=True)

    def remote(self, *args, **options):
        if args:
            return self._wrap(args[0])
        return self._wrap

    def _wrap(self, target):
        fake = self
        if isinstance(target, type):
            class Actor:
                @staticmethod
                def remote(*args):
                    instance = target(*args)
                    pool = concurrent.futures.ThreadPoolExecutor(1)
                    handle = type("Handle", (), {})()
                    for name in dir(target):
                        if not name.startswith("_"):
                            method = getattr(instance, name)
                            setattr(handle, name, type("Method", (), {"remote": staticmethod(
                                lambda *a, m=method: pool.submit(m, *a))})())
                    return handle
            return Actor

        def run(*args):
            fake.ran.append(target.__name__)
            return target(*args)
        return type("Fn", (), {"remote": staticmethod(lambda *a: fake.cpus.submit(run, *a))})

    def get(self, refs, timeout=None):
        if isinstance(refs, list):
            return [ref.result(timeout) for ref in refs]
        return refs.result(timeout)

    def wait(self, refs, num_returns=1, timeout=None):
        done, _ = concurrent.futures.wait(refs, timeout=timeout)
        ready = [ref for ref in refs if ref in done][:num_returns]
        return ready, [ref for ref in refs if ref not in ready]


def test_measure_queued_plumbing():
    """Blockers hold every CPU, the tasks stay queued until shutdown drops them, and the
    gate lets the blockers go afterwards; the figures come out (their values are not
    checked: this is a thread pool, not a cluster)."""
    fake = _FakeRay()
    cfg = bw.SMOKE
    threads_before = threading.active_count()
    got = bq.measure_queued(fake, cfg, {"num_cpus": 2})
    assert fake.calls == ["init", "shutdown"]
    assert sorted(fake.ran_at_shutdown) == ["blocker", "blocker", "noop", "noop", "noop",
                                            "noop"]      # warm-up, then only blockers ran
    assert fake.ran.count("noop") == 4                    # the queued ones never ran
    assert set(got) == {"bytes_per_task", "submit_rate", "by_role", "processes", "shutdown"}
    assert "driver" in got["by_role"] and got["processes"][0] >= 1
    assert got["submit_rate"] > 0 and got["shutdown"] >= 0
    fake.cpus.shutdown(wait=True)                         # the blockers have been let go
    assert threading.active_count() <= threads_before + 2  # (the actor's pool thread)


def test_queued_records_report_a_failure_on_every_row():
    records = bq.queued_records(_FakeRay(fail_init=True), bw.SMOKE, {"num_cpus": 2})
    assert [r["name"] for r in records] == bq.queued_names(bw.SMOKE)
    assert [r["unit"] for r in records] == ["B/task", "tasks/s", "s"]
    assert all(r["value"] is None and "no cluster today" in r["error"] for r in records)


# --------------------------------------------------------------------------- --compare ray without Ray


@pytest.fixture
def no_ray_python(tmp_path):
    fake = tmp_path / "python-without-ray"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named ray' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return str(fake)


def test_detect_ray_python_reports_why(no_ray_python, tmp_path):
    python, why = mb.detect_ray_python(no_ray_python)
    assert python is None and "not importable" in why and "No module named ray" in why
    python, why = mb.detect_ray_python(str(tmp_path / "missing"))
    assert python is None and "cannot run" in why


def _fake_zray_doc():
    return {"target": "zray", "version": zray.__version__, "machine": bw.describe_machine(),
            "results": _records(("tasks sync", 1000.0, "tasks/s"), ("shutdown", 0.2, "s"))}


def test_compare_ray_unavailable_prints_note(monkeypatch, no_ray_python):
    commands = []

    def fake_run_child(cmd, timeout, echo=True):
        commands.append(cmd)
        return _fake_zray_doc()
    monkeypatch.setattr(mb, "run_child", fake_run_child)
    result = CliRunner().invoke(cli.main, ["microbenchmark", "--quick", "--compare", "ray",
                                           "--ray-python", no_ray_python])
    assert result.exit_code == 0, result.output
    assert "note: --compare ray skipped" in result.output
    assert "zray's figures only" in result.output
    assert "tasks sync" in result.output and "1,000" in result.output
    assert len(commands) == 1 and "zray" in commands[0]     # Ray was never started


def test_compare_ray_unavailable_json(monkeypatch):
    monkeypatch.setattr(mb, "detect_ray_python", lambda explicit=None: (None, "no ray here"))
    monkeypatch.setattr(mb, "run_child", lambda cmd, timeout, echo=True: _fake_zray_doc())
    result = CliRunner().invoke(cli.main, ["microbenchmark", "--compare", "ray", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ray"] is None and "no ray here" in doc["note"]
    assert [row["name"] for row in doc["rows"]] == ["tasks sync", "shutdown"]
    assert doc["versions"] == {"zray": zray.__version__}


def test_zray_failure_exits_nonzero(monkeypatch):
    def failing(cmd, timeout, echo=True):
        raise RuntimeError("child crashed")
    monkeypatch.setattr(mb, "run_child", failing)
    result = CliRunner().invoke(cli.main, ["microbenchmark", "--quick"])
    assert result.exit_code != 0


# --------------------------------------------------------------------------- a real tiny run


def test_smoke_run_against_zray():
    """Every workload runs end to end against zray (ten-ish operations each)."""
    logged = []
    records = bw.run_all(zray, smoke=True, num_cpus=2, log=logged.append)
    assert not zray.is_initialized()
    assert [r["name"] for r in records] == bw.workload_names(bw.SMOKE)
    for record in records:
        assert record.get("error") is None, record
        assert _plausible(record), record
        assert record["unit"]
    assert len(logged) == len(records)
    memory = next(r for r in records if r["unit"] == "B/task")
    assert memory["count"] == bw.SMOKE.queued_tasks and "driver" in memory["by_role"]


def test_nodes_benchmark_spreads_tasks_over_every_node():
    from zray._private import bench_cluster

    result = bench_cluster.run_nodes(zray, 3, tasks=300)
    assert not zray.is_initialized()
    assert result["tasks"] == 300 and sum(result["per_node"]) == 300
    assert len(result["per_node"]) == 3 and min(result["per_node"]) > 0
    assert result["tasks_per_s"] > 0 and result["head_cpu_share"] > 0


def test_child_process_result_parses(tmp_path):
    """The real child command prints a result line the parent can parse."""
    cmd = mb.child_command("zray", "smoke", 2, sys.executable)
    doc = mb.run_child(cmd, timeout=80, echo=False)
    assert doc["target"] == "zray" and doc["mode"] == "smoke"
    assert [r["name"] for r in doc["results"]] == bw.workload_names(bw.SMOKE)
    assert all(_plausible(r) for r in doc["results"])


def _plausible(record):
    """Positive, except memory growth: a few hundred queued tasks can sit in memory the
    processes already had."""
    if record["unit"] == "B/task":
        return isinstance(record["value"], float)
    return record["value"] is not None and record["value"] > 0
