"""Runtime environments: env_vars, working_dir, py_modules and pip, workers kept per
environment, setup errors, the job's environment, and a working_dir shipped to
another node.  One single-node cluster for the module (its environment cache
in the module's temporary folder); the two-node test starts its own."""

import json
import os
import zipfile

import pytest

import zray
from zray import exceptions
from zray._private import ids, protocol, validate
from zray._private.runtime_env import resolve
from tests.clusters import running
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def tiny_wheel(folder, name="tinypkg", value="tiny"):
    """A pure-Python wheel, written by hand (no build tools, no network)."""
    path = os.path.join(folder, f"{name}-0.1-py3-none-any.whl")
    info = f"{name}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", f"VALUE = {value!r}\n")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                        "Root-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("renv"))


@pytest.fixture(scope="module")
def cache(tmp):
    return os.path.join(tmp, "cache")


@pytest.fixture(scope="module", autouse=True)
def cluster(tmp, cache):
    saved = {k: os.environ.get(k) for k in ("ZRAY_RUNTIME_ENV_DIR", "PIP_NO_INDEX",
                                            "ZRAY_RUNTIME_ENV_IDLE_SECONDS")}
    os.environ.update(ZRAY_RUNTIME_ENV_DIR=cache, PIP_NO_INDEX="1",
                      ZRAY_RUNTIME_ENV_IDLE_SECONDS="3")
    zray.init(num_cpus=2)
    yield
    zray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def project(tmp):
    """A working_dir: a module, a data file, and a file excludes leave out."""
    root = os.path.join(tmp, "project")
    write(os.path.join(root, "helper.py"), "def answer():\n    return 'from working_dir'\n")
    write(os.path.join(root, "data", "input.txt"), "data by relative path")
    write(os.path.join(root, "secret.txt"), "left out")
    return root


@pytest.fixture(scope="module")
def wheel(tmp):
    folder = os.path.join(tmp, "wheels")
    os.makedirs(folder)
    return tiny_wheel(folder)


@zray.remote
def pid():
    return os.getpid()


@zray.remote
def in_project():
    import helper

    with open("data/input.txt") as f:
        data = f.read()
    return helper.answer(), data, os.getcwd(), os.path.exists("secret.txt"), os.getpid()


@zray.remote
def import_value(name):
    import importlib

    module = importlib.import_module(name)
    return module.VALUE, module.__file__, os.getpid()


# ---------------------------------------------------------------------- env_vars
def test_env_vars_are_set_around_the_call_on_default_workers():
    @zray.remote(runtime_env={"env_vars": {"RENV_TEST": "on"}})
    def read():
        return os.environ.get("RENV_TEST")

    @zray.remote
    def read_plain():
        return os.environ.get("RENV_TEST")

    assert zray.get(read.remote()) == "on"
    assert zray.get(read_plain.remote()) is None


def test_a_nested_task_inherits_its_parents_env_vars():
    @zray.remote
    def read():
        return os.environ.get("RENV_NESTED")

    @zray.remote(runtime_env={"env_vars": {"RENV_NESTED": "parent"}})
    def parent():
        return zray.get(read.remote())

    @zray.remote(runtime_env={"env_vars": {"RENV_NESTED": "actor"}})
    class Parent:
        def child(self):
            return zray.get(read.remote())

    assert zray.get(parent.remote()) == "parent"
    assert zray.get(Parent.remote().child.remote()) == "actor"
    assert zray.get(read.remote()) is None


# ---------------------------------------------------------------------- working_dir
def test_working_dir_folder_is_the_current_folder_and_importable(project, cache):
    env = {"working_dir": project, "excludes": ["secret.txt"]}
    answer, data, cwd, secret_there, _ = zray.get(in_project.options(runtime_env=env).remote())
    assert answer == "from working_dir"
    assert data == "data by relative path"
    assert cwd.startswith(os.path.join(cache, "packages"))
    assert not secret_there
    # Without the environment the module is not there.
    with pytest.raises(exceptions.RayTaskError, match="helper"):
        zray.get(in_project.remote())


def test_working_dir_zip(tmp):
    path = os.path.join(tmp, "bundle.zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("bundle/zipped_mod.py", "VALUE = 'from the zip'\n")
    value, where, _ = zray.get(import_value.options(runtime_env={"working_dir": path})
                               .remote("zipped_mod"))
    assert value == "from the zip"
    assert os.path.basename(os.path.dirname(where)) == "bundle"


def test_a_nested_task_inherits_its_parents_environment(project):
    @zray.remote
    def parent():
        return zray.get(in_project.remote())[0]

    assert zray.get(parent.options(runtime_env={"working_dir": project}).remote()) == \
        "from working_dir"


# ---------------------------------------------------------------------- py_modules
def test_py_modules_folder_and_wheel(tmp, wheel):
    module = os.path.join(tmp, "modules", "shipped_mod")
    write(os.path.join(module, "__init__.py"), "VALUE = 'from a folder'\n")
    env = {"py_modules": [module, wheel]}
    value, _, _ = zray.get(import_value.options(runtime_env=env).remote("shipped_mod"))
    assert value == "from a folder"
    value, _, _ = zray.get(import_value.options(runtime_env=env).remote("tinypkg"))
    assert value == "tiny"


# ---------------------------------------------------------------------- pip
def test_pip_installs_into_a_cached_venv_reused_by_the_next_worker(wheel, cache):
    env = {"pip": {"packages": [wheel], "pip_check": False}}

    @zray.remote(max_calls=1)  # each task on a worker of its own
    def venv():
        import sys

        import tinypkg

        with open(os.path.join(sys.prefix, ".zray-ready")) as f:
            built = f.read()
        return tinypkg.VALUE, sys.prefix, built, os.getpid()

    first = zray.get(venv.options(runtime_env=env).remote())
    second = zray.get(venv.options(runtime_env=env).remote())
    assert first[0] == second[0] == "tiny"
    assert first[1].startswith(os.path.join(cache, "pip"))
    assert first[1:3] == second[1:3]   # the same venv, built once
    assert first[3] != second[3]
    with pytest.raises(exceptions.RayTaskError, match="tinypkg"):
        zray.get(import_value.remote("tinypkg"))


def test_an_unresolvable_requirement_fails_with_pips_error(cache):
    env = {"pip": ["zray-no-such-package-xyz"]}
    for _ in range(2):  # the second fails from the cached failure, no hang
        with pytest.raises(exceptions.RuntimeEnvSetupError,
                           match="(?s)zray-no-such-package-xyz.*No matching distribution"):
            zray.get(pid.options(runtime_env=env).remote(), timeout=60)
    failed = [n for n in os.listdir(os.path.join(cache, "pip")) if n.endswith(".failed")]
    assert len(failed) == 1   # remembered, not retried by each task

    @zray.remote
    class Needy:
        def ping(self):
            return "pong"

    actor = Needy.options(runtime_env=env).remote()
    with pytest.raises(exceptions.ActorDiedError,
                       match="(?s)RuntimeEnvSetupError.*No matching distribution"):
        zray.get(actor.ping.remote(), timeout=60)


# ---------------------------------------------------------------------- workers per env
def test_tasks_of_different_environments_never_share_a_worker(project, tmp):
    other = os.path.join(tmp, "other")
    write(os.path.join(other, "other_mod.py"), "VALUE = 1\n")
    a = [pid.options(runtime_env={"working_dir": project}).remote() for _ in range(6)]
    b = [pid.options(runtime_env={"working_dir": other}).remote() for _ in range(6)]
    plain = [pid.remote() for _ in range(6)]
    pids_a, pids_b, pids_plain = set(zray.get(a)), set(zray.get(b)), set(zray.get(plain))
    assert not pids_a & pids_b
    assert not pids_a & pids_plain
    assert not pids_b & pids_plain


def test_an_actor_runs_in_its_own_environment(project):
    @zray.remote
    class Reader:
        def answer(self):
            import helper

            return helper.answer(), os.path.exists("data/input.txt")

    actor = Reader.options(runtime_env={"working_dir": project}).remote()
    assert zray.get(actor.answer.remote()) == ("from working_dir", True)
    plain = Reader.remote()
    with pytest.raises(exceptions.RayTaskError, match="helper"):
        zray.get(plain.answer.remote())


def test_idle_environment_workers_are_retired(tmp):
    folder = os.path.join(tmp, "short_lived")
    write(os.path.join(folder, "x.py"), "")
    worker = zray.get(pid.options(runtime_env={"working_dir": folder}).remote())

    def gone():
        try:
            os.kill(worker, 0)
        except OSError:
            return True
        return False

    assert eventually(gone, within=30)


# ---------------------------------------------------------------------- errors
def test_a_missing_folder_fails_on_the_callers_line(tmp):
    missing = os.path.join(tmp, "does-not-exist")
    with pytest.raises(exceptions.RuntimeEnvSetupError, match="does not exist"):
        pid.options(runtime_env={"working_dir": missing}).remote()
    with pytest.raises(exceptions.RuntimeEnvSetupError, match="does not exist"):
        pid.options(runtime_env={"py_modules": [missing]}).remote()


def test_a_py_module_that_is_no_folder_or_wheel_is_refused(tmp):
    path = os.path.join(tmp, "notes.txt")
    write(path, "not a module")
    with pytest.raises(exceptions.RuntimeEnvSetupError, match="neither a folder"):
        pid.options(runtime_env={"py_modules": [path]}).remote()


def test_a_folder_over_the_size_limit_is_refused(tmp, monkeypatch):
    big = os.path.join(tmp, "big")
    os.makedirs(big)
    with open(os.path.join(big, "blob.bin"), "wb") as f:
        f.write(os.urandom(64 * 1024))
    monkeypatch.setenv("ZRAY_RUNTIME_ENV_MAX_BYTES", "16384")
    with pytest.raises(exceptions.RuntimeEnvSetupError, match="limit"):
        pid.options(runtime_env={"working_dir": big}).remote()


def test_bad_runtime_env_options_fail_when_given():
    with pytest.raises(ValueError, match="conda"):
        pid.options(runtime_env={"conda": "env"})
    with pytest.raises(ValueError, match="py_modules"):
        pid.options(runtime_env={"py_modules": "/a/path"})
    with pytest.raises(ValueError, match="pip"):
        pid.options(runtime_env={"pip": 3})


# ---------------------------------------------------------------------- the job's environment
def test_the_jobs_environment_applies_to_every_task_and_merges(project):
    resolve.set_job_env({"working_dir": project, "env_vars": {"JOB_VAR": "job",
                                                               "BOTH": "job"}})
    try:
        @zray.remote
        def seen():
            import helper

            return helper.answer(), os.environ.get("JOB_VAR"), os.environ.get("BOTH")

        assert zray.get(seen.remote()) == ("from working_dir", "job", "job")
        mine = seen.options(runtime_env={"env_vars": {"BOTH": "task"}})
        assert zray.get(mine.remote()) == ("from working_dir", "job", "task")
    finally:
        resolve.set_job_env({})
    assert zray.get(in_project.options(runtime_env={"working_dir": project}).remote())[0]


def test_a_tasks_keys_replace_the_jobs_and_env_vars_merge():
    def prepared(kinds, pip=None, env_vars=None, tag="a"):
        packages = [{"kind": kind, "digest": f"{tag}{i}" * 32, "name": kind}
                    for i, kind in enumerate(kinds)]
        wire = {"packages": packages} if packages else {}
        if pip:
            wire["pip"] = pip
        return resolve.Prepared(resolve.with_key(wire) if wire else None,
                                tuple(f"{tag}{i}".encode() for i in range(len(kinds))),
                                env_vars or {})

    job = prepared(["working_dir", "py_module"], pip=["a"], env_vars={"X": "job", "Y": "job"})
    task = prepared(["working_dir"], env_vars={"Y": "task"}, tag="b")
    merged = resolve.merge(job, task, {"working_dir": "w", "env_vars": {"Y": "task"}})
    assert [p["kind"] for p in merged.wire["packages"]] == ["working_dir", "py_module"]
    assert merged.wire["packages"][0]["digest"] == "b0" * 32  # the task's working_dir
    assert merged.oids == (b"b0", b"a1")                        # ... and the job's module
    assert merged.wire["pip"] == ["a"]
    assert merged.env_vars == {"X": "job", "Y": "task"}
    assert merged.wire["key"] not in (job.wire["key"], task.wire["key"])
    only_pip = resolve.merge(job, prepared([], pip=["b"]), {"pip": ["b"]})
    assert only_pip.wire["pip"] == ["b"] and len(only_pip.wire["packages"]) == 2


def test_init_reads_the_job_runtime_env_variable_unless_given(monkeypatch):
    from zray._private.init_options import Settings

    monkeypatch.setenv(resolve.JOB_ENV_VARIABLE, json.dumps(
        {"working_dir": "/srv/job", "env_vars": {"A": "1"}, "pip": ["x"]}))
    assert Settings().runtime_env == {"working_dir": "/srv/job", "env_vars": {"A": "1"},
                                      "pip": ["x"]}
    assert Settings(runtime_env={"env_vars": {"B": "2"}}).runtime_env == \
        {"env_vars": {"B": "2"}}
    monkeypatch.setenv(resolve.JOB_ENV_VARIABLE, json.dumps({"conda": "x"}))
    with pytest.raises(ValueError, match="conda"):
        Settings()


def test_the_spec_field_is_validated():
    spec = protocol.task_spec(task_id=ids.new_id(), name="f", function_id=b"\1" * 16)
    good = {"key": "ab" * 16, "packages": [{"kind": "working_dir", "digest": "cd" * 32,
                                            "name": "w"}]}
    validate.check(protocol.Op.SUBMIT, {"tasks": [dict(spec, runtime_env=good,
                                                       deps=[ids.object_id(ids.new_id(), 0)])]},
                   ())
    for bad in ({"key": "../x"},
                dict(good, packages=[dict(good["packages"][0], digest="../../etc")]),
                dict(good, packages=[dict(good["packages"][0], kind="conda")])):
        deps = [ids.object_id(ids.new_id(), 0)]
        with pytest.raises(protocol.ProtocolError, match="runtime_env"):
            validate.check(protocol.Op.SUBMIT, {"tasks": [dict(spec, runtime_env=bad,
                                                               deps=deps)]}, ())
    with pytest.raises(protocol.ProtocolError, match="runtime_env"):  # packages need deps
        validate.check(protocol.Op.SUBMIT, {"tasks": [dict(spec, runtime_env=good)]}, ())


# ---------------------------------------------------------------------- two nodes
def test_working_dir_reaches_another_node(tmp, cache, monkeypatch):
    monkeypatch.delenv("ZRAY_RUNTIME_ENV_DIR")  # the nodes' cache: in the cluster's folder
    folder = os.path.join(tmp, "remote_project")
    write(os.path.join(folder, "far_mod.py"), "VALUE = 'shipped to the other node'\n")
    zray.shutdown()  # this module's cluster: the two-node one connects this driver
    try:
        with running("zre", ["--num-cpus", "1"],
                     [["--num-cpus", "1", "--resources", json.dumps({"far": 1})]],
                     cpus=2) as cluster:
            zray.shutdown()
            zray.init(address=cluster.address, runtime_env={"working_dir": folder})
            here = zray.get_runtime_context().get_node_id()

            @zray.remote(resources={"far": 1})
            def far():
                import far_mod

                return far_mod.VALUE, zray.get_runtime_context().get_node_id(), os.getcwd()

            value, node, cwd = zray.get(far.remote(), timeout=60)
            assert value == "shipped to the other node"
            assert node != here
            assert cwd.startswith(os.path.join(cluster.tmpdir, "zray_runtime_env"))
    finally:
        monkeypatch.setenv("ZRAY_RUNTIME_ENV_DIR", cache)
        zray.init(num_cpus=2)  # the module's cluster again, for any test after this one
