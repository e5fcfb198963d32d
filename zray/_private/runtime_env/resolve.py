"""A ``runtime_env`` as the caller gives it, checked, packed and put on a task spec.

::

    runtime_env (dict) ──check──▶ ValueError/TypeError on the caller's line
        ──prepare (once per distinct dict and client)──▶ Prepared
              working_dir / py_modules: packed (packaging.pack), each archive
              ``put`` once as a zray object the job holds
        ──merge with the job's (or, in a worker, its own task's)──▶ attach
              spec["runtime_env"] = {key, packages, pip...}, the packages'
              objects appended to spec["deps"], env_vars in spec["env_vars"]

The job's environment is ``init(runtime_env=...)`` (or ``ZRAY_JOB_RUNTIME_ENV``,
set by ``zray job submit``); a task's own keys override the job's, and its
``env_vars`` are merged over the job's, as in Ray.  A task submitted from a
worker inherits that worker's environment the same way.

Owns: the checked and prepared environments of this process, the refs that
keep their packages alive.  Must not: build environments (``setup`` does, on
the nodes).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple

if TYPE_CHECKING:  # packing (zipfile, hashlib) loads when first needed: import stays fast
    from zray._private.runtime_env import packaging

#: The keys zray understands; the others are refused, never ignored.
KEYS = ("env_vars", "working_dir", "py_modules", "excludes", "pip", "config")
#: Keys of pip's dict form.
PIP_KEYS = ("packages", "pip_check", "pip_version", "pip_install_options")
JOB_ENV_VARIABLE = "ZRAY_JOB_RUNTIME_ENV"


class Prepared(NamedTuple):
    """An environment ready for specs: its wire form (or None: env_vars only)."""
    wire: Optional[dict]             # protocol.RuntimeEnvSpec
    oids: Tuple[bytes, ...]          # the packages' objects, in ``wire["packages"]`` order
    env_vars: Dict[str, str]


EMPTY = Prepared(None, (), {})


# ---------------------------------------------------------------------- checking
def check(runtime_env: Any, where: str = "runtime_env") -> Dict[str, Any]:
    """``runtime_env`` checked (TypeError/ValueError naming the bad key); a plain dict."""
    if runtime_env is None:
        return {}
    if not isinstance(runtime_env, Mapping):
        raise TypeError(f"{where}: runtime_env must be a dict, got "
                        f"{type(runtime_env).__name__}")
    unknown = sorted(str(k) for k in runtime_env if k not in KEYS)
    if unknown:
        raise ValueError(f"{where}: runtime_env {', '.join(map(repr, unknown))} is not "
                         f"supported (supported: {', '.join(KEYS)})")
    env = {k: v for k, v in runtime_env.items() if v is not None}
    env_vars = env.get("env_vars", {})
    if not isinstance(env_vars, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise TypeError(f"{where}: runtime_env env_vars must be a dict of str to str, "
                        f"got {env_vars!r}")
    if "working_dir" in env and not isinstance(env["working_dir"], (str, os.PathLike)):
        raise TypeError(f"{where}: runtime_env working_dir must be a folder or .zip path, "
                        f"got {env['working_dir']!r}")
    for key in ("py_modules", "excludes"):
        if key in env and (isinstance(env[key], (str, bytes)) or not all(
                isinstance(p, (str, os.PathLike)) for p in _iterable(env[key], where, key))):
            raise TypeError(f"{where}: runtime_env {key} must be a list of paths, "
                            f"got {env[key]!r}")
    if "pip" in env:
        _check_pip(env["pip"], where)
    if "config" in env and not isinstance(env["config"], Mapping):
        raise TypeError(f"{where}: runtime_env config must be a dict, got {env['config']!r}")
    return env


def _iterable(value: Any, where: str, key: str) -> list:
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"{where}: runtime_env {key} must be a list, got {value!r}") from None


def _check_pip(pip: Any, where: str) -> None:
    if isinstance(pip, Mapping):
        unknown = sorted(str(k) for k in pip if k not in PIP_KEYS)
        if unknown or "packages" not in pip:
            raise ValueError(f"{where}: runtime_env pip as a dict takes 'packages' and "
                             f"optionally {', '.join(PIP_KEYS[1:])}; got {sorted(pip)}")
        _check_pip(pip["packages"], where)
        options = pip.get("pip_install_options", [])
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise TypeError(f"{where}: runtime_env pip_install_options must be a list of "
                            f"str, got {options!r}")
    elif not isinstance(pip, str) and not (
            isinstance(pip, (list, tuple)) and all(isinstance(r, str) for r in pip)):
        raise TypeError(f"{where}: runtime_env pip must be a list of requirements, a "
                        f"requirements file's path or {{'packages': [...]}}, got {pip!r}")


def job_env_from_environment() -> Optional[Dict[str, Any]]:
    """The job's runtime_env ``zray job submit`` gives its driver, if any."""
    text = os.environ.get(JOB_ENV_VARIABLE)
    if not text:
        return None
    try:
        env = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{JOB_ENV_VARIABLE} is not JSON: {exc}") from None
    return check(env, JOB_ENV_VARIABLE)


# ---------------------------------------------------------------------- preparing
def prepare(env: Dict[str, Any], put: Any) -> Prepared:
    """Pack and ``put`` what ``env`` ships (RuntimeEnvSetupError for a bad folder).

    Returns the wire form and the refs that keep the packages alive (``put``'s).
    """
    from zray._private.runtime_env import packaging
    from zray.exceptions import RuntimeEnvSetupError

    env_vars = dict(env.get("env_vars", {}))
    packages: List[dict] = []
    refs: List[Any] = []
    excludes = [os.fspath(p) for p in env.get("excludes", ())]
    try:
        if "working_dir" in env:
            package = packaging.pack(env["working_dir"], excludes, "working_dir")
            packages.append(_entry("working_dir", package, env["working_dir"]))
            refs.append(_put_once(package, put))
        for path in env.get("py_modules", ()):
            package = _pack_module(os.fspath(path), excludes)
            packages.append(_entry("py_module", package, path))
            refs.append(_put_once(package, put))
    except packaging.PackageError as exc:
        raise RuntimeEnvSetupError(str(exc)) from None
    wire: Dict[str, Any] = {}
    if packages:
        wire["packages"] = packages
    if "pip" in env:
        wire.update(_pip_wire(env["pip"]))
    if not wire:
        return Prepared(None, (), env_vars)
    return Prepared(with_key(wire), tuple(r._id for r in refs), env_vars)


def _put_once(package: packaging.Package, put: Any) -> Any:
    """The object holding the package: put once per content, held by this process."""
    with _lock:
        ref = _held.get(package.digest)
        if ref is None:
            ref = _held[package.digest] = put(package.data)
        return ref


def _entry(kind: str, package: packaging.Package, path: Any) -> dict:
    return {"kind": kind, "digest": package.digest, "name": os.path.basename(
        os.path.normpath(os.fspath(path)))}


def _pack_module(path: str, excludes: List[str]) -> packaging.Package:
    """A py_module: a folder (shipped under its own name) or a .whl/.zip (as is)."""
    from zray._private.runtime_env import packaging

    if os.path.isdir(path):
        name = os.path.basename(os.path.normpath(path))
        return packaging.pack(path, excludes, "py_modules", prefix=name)
    if os.path.isfile(path) and not path.endswith((".whl", ".zip")):
        raise packaging.PackageError(f"runtime_env py_modules {path!r} is neither a folder "
                                     f"nor a .whl or .zip file")
    return packaging.pack(path, (), "py_modules")


def _pip_wire(pip: Any) -> dict:
    options: List[str] = []
    check_after = False
    if isinstance(pip, Mapping):
        options = list(pip.get("pip_install_options", []))
        check_after = bool(pip.get("pip_check", False))
        pip = pip["packages"]
    if isinstance(pip, str):
        pip = read_requirements(pip)
    wire: Dict[str, Any] = {"pip": [r.strip() for r in pip if r.strip()]}
    if options:
        wire["pip_options"] = options
    if check_after:
        wire["pip_check"] = True
    return wire


def read_requirements(path: str) -> List[str]:
    from zray.exceptions import RuntimeEnvSetupError

    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise RuntimeEnvSetupError(f"runtime_env pip: cannot read the requirements file "
                                   f"{path!r}: {exc}") from None
    return [line.split(" #")[0].strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#")]


def with_key(wire: dict) -> dict:
    """``wire`` with its ``key``: the hash of everything that makes the environment."""
    import hashlib

    body = {k: v for k, v in wire.items() if k != "key"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return dict(body, key=hashlib.sha256(text.encode()).hexdigest()[:32])


def merge(parent: Prepared, child: Prepared, child_env: Dict[str, Any]) -> Prepared:
    """The child's keys over the parent's; env_vars merged, the child's winning."""
    env_vars = {**parent.env_vars, **child.env_vars}
    if parent.wire is None:
        return Prepared(child.wire, child.oids, env_vars)
    parents = list(zip(_packages(parent.wire), parent.oids))
    childs = list(zip(_packages(child.wire), child.oids))
    pairs = [pair for kind, key in (("working_dir", "working_dir"), ("py_module", "py_modules"))
             for pair in (childs if key in child_env else parents) if pair[0]["kind"] == kind]
    source = child.wire if "pip" in child_env else parent.wire
    wire = {k: v for k, v in (source or {}).items() if k.startswith("pip")}
    if pairs:
        wire["packages"] = [package for package, _ in pairs]
    if not wire:
        return Prepared(None, (), env_vars)
    return Prepared(with_key(wire), tuple(oid for _, oid in pairs), env_vars)


def _packages(wire: Optional[dict]) -> list:
    return (wire or {}).get("packages", [])


# ---------------------------------------------------------------------- this process
_lock = threading.RLock()
_held: Dict[str, Any] = {}               # digest -> the ref keeping its package alive
# id(env dict) -> (that dict, its Prepared, the parent it was merged with, the merge)
_prepared: Dict[int, Tuple[Any, Prepared, Any, Prepared]] = {}
_parent: Prepared = EMPTY                # the job's (driver) or the running task's (worker)
_active = False                          # whether a parent environment is set


def active() -> bool:
    """Whether every spec needs ``attach`` (a job or parent environment is set)."""
    return _active


def _put(data: bytes) -> Any:
    from zray._private import state

    return state.client.put(data)


def set_job_env(env: Dict[str, Any]) -> None:
    """The driver's job environment: packed and put now (errors on ``init``'s line)."""
    global _parent, _active
    prepared = prepare(env, _put) if env else EMPTY
    with _lock:
        _parent = prepared
        _active = prepared.wire is not None or bool(prepared.env_vars)


def set_parent(wire: Optional[dict], oids: Tuple[bytes, ...], env_vars: Dict[str, str]) -> None:
    """In a worker: the environment its tasks run in, inherited by what they submit."""
    global _parent, _active
    _parent = Prepared(wire, tuple(oids), dict(env_vars))
    _active = wire is not None or bool(env_vars)


def inherit_env_vars(env_vars: Dict[str, str]) -> Dict[str, str]:
    """In a worker: the env_vars of the call running (an actor: of its life), passed on
    to what it submits.  Returns the previous ones, to restore after the call."""
    global _parent, _active
    before = _parent.env_vars
    _parent = _parent._replace(env_vars=env_vars)
    _active = _parent.wire is not None or bool(env_vars)
    return before


def reset() -> None:
    """Forget this process's environments (shutdown): their refs go with the client."""
    global _parent, _active
    with _lock:
        _held.clear()
        _prepared.clear()
        _parent, _active = EMPTY, False


def attach(spec: dict, env: Optional[Dict[str, Any]]) -> None:
    """Put the environment (``env`` over the parent's) on a task spec."""
    if env:
        parent = _parent
        with _lock:
            known = _prepared.get(id(env))
            if known is None or known[0] is not env:
                if len(_prepared) > 1000:
                    _prepared.clear()
                own = prepare(check(env), _put)
                known = (env, own, None, own)
            if known[2] is not parent:  # merged once per parent environment
                known = (env, known[1], parent, merge(parent, known[1], env))
            _prepared[id(env)] = known
        prepared = known[3]
    else:
        prepared = _parent
    env_vars = prepared.env_vars
    if "env_vars" in spec:  # the task's own (options.run_settings): over the job's
        env_vars = {**env_vars, **spec["env_vars"]}
    if env_vars:
        spec["env_vars"] = env_vars
    if prepared.wire is not None:
        spec["runtime_env"] = prepared.wire
        spec["deps"] = [*spec.get("deps", ()), *prepared.oids]
