"""The ``zray`` command line and the microbenchmark plumbing (not its timings)."""

import json
import os
import stat
import sys

import pytest
from click.testing import CliRunner

import zray
from zray import cli
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
    assert mb.lower_is_better("s") and mb.lower_is_better("us/task")
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


def test_init_kwargs_only_quiets_ray():
    assert bw.init_kwargs("zray", 2) == {"num_cpus": 2}
    assert bw.init_kwargs("ray", 2) == {"num_cpus": 2, "include_dashboard": False,
                                        "log_to_driver": False}


def test_workload_names_cover_the_brief():
    names = bw.workload_names(bw.QUICK)
    assert "put 100 MiB array" in names and "get 100 MiB array" in names
    assert "tasks with 10 MiB ref arg" in names and "tree reduce 256 x 1 MB" in names
    assert names[-3:] == ["scaling: tasks async n=1,000", "scaling: tasks async n=10,000",
                          "shutdown"]
    assert "scaling: tasks async n=100,000" in bw.workload_names(bw.FULL)
    assert len(set(names)) == len(names)


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
        assert record["value"] > 0, record
        assert record["unit"]
    assert len(logged) == len(records)


def test_child_process_result_parses(tmp_path):
    """The real child command prints a result line the parent can parse."""
    cmd = mb.child_command("zray", "smoke", 2, sys.executable)
    doc = mb.run_child(cmd, timeout=80, echo=False)
    assert doc["target"] == "zray" and doc["mode"] == "smoke"
    assert [r["name"] for r in doc["results"]] == bw.workload_names(bw.SMOKE)
    assert all(r["value"] and r["value"] > 0 for r in doc["results"])
