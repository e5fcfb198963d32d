"""Building a runtime environment on a node, in the worker that will run in it.

::

    template ──fork──▶ child ─(pip)─▶ venv_for: cached virtualenv ──exec──▶ its python
                         │                                                │
                         └───────────── worker_loop ◀─────────────────────┘
    first task of the environment ──▶ Environment.enter: each package's object
        (the spec's last deps, fetched like any argument) unpacked once per node
        into the cache; working_dir becomes the current folder; all on sys.path

The cache (``ZRAY_RUNTIME_ENV_DIR``, else ``zray_runtime_env`` under
``ZRAY_TMPDIR`` or the system's temporary folder) is shared by every session
on the machine: ``packages/<sha256>`` and ``pip/<hash>`` (a virtualenv made
with ``--system-site-packages`` and a ``.pth`` that adds this interpreter's
own paths, so zray and what the job's driver has stay importable).  A pip
environment whose install failed is remembered for ``FAILURE_SECONDS``: the
workers started meanwhile fail their tasks with the same error instead of
running pip again.

Owns: the cache on disk, this worker's environment.  Must not: talk to the
agent except through the client's public verbs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Iterator, List, Optional

from zray._private.runtime_env import packaging

FAILURE_SECONDS = float(os.environ.get("ZRAY_RUNTIME_ENV_FAILURE_SECONDS", "30"))
PIP_TIMEOUT = float(os.environ.get("ZRAY_RUNTIME_ENV_PIP_TIMEOUT", "600"))
READY_FILE = ".zray-ready"

#: Set in a forked child whose pip environment could not be built: its tasks fail.
interpreter_failure: Optional[str] = None


def cache_root() -> str:
    root = os.environ.get("ZRAY_RUNTIME_ENV_DIR")
    if not root:
        base = os.environ.get("ZRAY_TMPDIR") or tempfile.gettempdir()
        root = os.path.join(base, "zray_runtime_env")
    return root


class SetupFailed(Exception):
    pass


# ---------------------------------------------------------------------- pip
def pip_key(pip: dict) -> str:
    text = json.dumps({k: v for k, v in pip.items() if k.startswith("pip")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def venv_for(pip: dict) -> str:
    """The virtualenv with ``pip``'s requirements, built the first time (under a lock:
    one builder per node, the others wait and reuse it).  Raises SetupFailed."""
    root = os.path.join(cache_root(), "pip")
    os.makedirs(root, exist_ok=True)
    key = pip_key(pip)
    venv = os.path.join(root, key)
    failed = os.path.join(root, key + ".failed")
    with _locked(os.path.join(root, key + ".lock")):
        if os.path.exists(os.path.join(venv, READY_FILE)):
            return venv
        try:
            if time.time() - os.path.getmtime(failed) < FAILURE_SECONDS:
                with open(failed) as f:
                    raise SetupFailed(f.read())
        except FileNotFoundError:
            pass
        shutil.rmtree(venv, ignore_errors=True)
        try:
            _build_venv(venv, pip)
        except SetupFailed as exc:
            shutil.rmtree(venv, ignore_errors=True)
            with open(failed, "w") as f:
                f.write(str(exc))
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(failed)
        with open(os.path.join(venv, READY_FILE), "w") as f:
            f.write(uuid.uuid4().hex)
    return venv


def _run(argv: List[str], what: str) -> None:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=PIP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupFailed(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join(done.stdout.decode(errors="replace").strip().splitlines()[-15:])
        raise SetupFailed(f"{what} failed (exit {done.returncode}):\n{tail}")


def _build_venv(venv: str, pip: dict) -> None:
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv],
         "creating the virtualenv")
    python = venv_python(venv)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], stdout=subprocess.PIPE, check=False)
    purelib = site.stdout.decode().strip()
    if site.returncode != 0 or not os.path.isdir(purelib):
        raise SetupFailed(f"the virtualenv {venv} has no site-packages folder")
    # After the venv's own packages: this interpreter's (zray, pip, what the job has).
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    with open(os.path.join(purelib, "_zray_parent_paths.pth"), "w") as f:
        f.write(f"import site; list(map(site.addsitedir, {paths!r}))\n")
    requirements = list(pip.get("pip", ()))
    if requirements:
        _run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
              *pip.get("pip_options", ()), *requirements],
             f"pip install {' '.join(requirements)}")
    if pip.get("pip_check"):
        _run([python, "-m", "pip", "check", "--disable-pip-version-check"], "pip check")


def switch_interpreter(pip_hex: str, agent_address: str, worker_id: bytes) -> None:
    """In a forked child: exec the pip environment's interpreter as this worker;
    on failure, return (the worker runs on and fails that environment's tasks)."""
    global interpreter_failure
    try:
        pip = json.loads(bytes.fromhex(pip_hex))
        python = venv_python(venv_for(pip))
    except SetupFailed as exc:
        interpreter_failure = f"runtime_env pip: {exc}"
        return
    except Exception as exc:
        interpreter_failure = f"runtime_env pip: {type(exc).__name__}: {exc}"
        return
    sys.stderr.flush()
    os.execv(python, [python, "-m", "zray._private.worker_main", "--worker",
                      worker_id.hex(), "--agent", agent_address])


# ---------------------------------------------------------------------- packages
class Environment:
    """The runtime environment this worker runs in (one per worker, set at its first task)."""

    def __init__(self) -> None:
        self.key: Optional[str] = None
        self.failure: Optional[str] = interpreter_failure
        # Refs to the packages' objects while this worker lives: the node keeps its
        # copy, so the next task of the environment does not pull them again.
        self.holds: List[Any] = []

    def enter(self, renv: dict, body: dict, client: Any, raw: List[Any]) -> dict:
        """Set the environment up if this is its first task; ``body`` without the
        packages' arguments.  Raises RuntimeEnvSetupError."""
        from zray.exceptions import RuntimeEnvSetupError

        from zray._private.runtime_env import resolve

        args = body.get("args", ())
        count = len(renv.get("packages", ()))
        descs = args[len(args) - count:]
        if count:
            body = dict(body, args=args[:len(args) - count])
        if self.failure is None and self.key is None:
            try:
                self.build(renv, descs, client, raw)
                self.key = renv["key"]
                from zray.object_ref import ObjectRef
                self.holds = [ObjectRef(desc["object_id"]) for desc in descs]
            except Exception as exc:
                self.failure = str(exc) if isinstance(exc, (SetupFailed, RuntimeEnvSetupError)) \
                    else f"{type(exc).__name__}: {exc}"
        if self.failure is not None:
            raise RuntimeEnvSetupError(f"the runtime_env could not be set up: {self.failure}")
        if self.key != renv["key"]:
            raise RuntimeEnvSetupError("a task of another runtime_env reached this worker")
        # What this task submits runs in its environment (and holds its packages).
        resolve.set_parent(renv, tuple(d["object_id"] for d in descs), {})
        return body

    def build(self, renv: dict, descs: Any, client: Any, raw: List[Any]) -> None:
        from zray._private.client import Descriptor

        root = os.path.join(cache_root(), "packages")
        folders = []
        for package, desc in zip(renv.get("packages", ()), descs):
            digest = package["digest"]
            if packaging.unpacked(digest, root):
                folder = os.path.join(root, digest)
            else:
                data = client.materialize(desc["object_id"], Descriptor.from_wire(desc, raw))
                try:
                    folder = packaging.unpack(bytes(data), digest, root)
                except packaging.PackageError as exc:
                    raise SetupFailed(f"{package['kind']} {package['name']!r}: {exc}") from None
            folders.append((package, folder))
        for package, folder in reversed(folders):
            if package["kind"] == "working_dir":
                if package["name"].endswith(".zip"):
                    folder = _single_folder(folder)
                os.chdir(folder)
            if folder not in sys.path:
                sys.path.insert(0, folder)


def _single_folder(folder: str) -> str:
    """A zipped working_dir holding one top folder works from inside it, as in Ray."""
    entries = [e for e in os.listdir(folder) if e != "__MACOSX"]
    if len(entries) == 1 and os.path.isdir(os.path.join(folder, entries[0])):
        return os.path.join(folder, entries[0])
    return folder
