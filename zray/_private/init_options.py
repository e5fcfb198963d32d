"""Ray's ``init`` parameters that are not about resources: checked and applied here.

``zray.init`` hands this module what it was given; this module says what is
wrong with it (ValueError/TypeError on the caller's line), and applies the
parts that act on the driver process itself: logging, the environment the
session's processes start with (``runtime_env`` ``env_vars``, ``_temp_dir``),
the job's runtime environment (:meth:`Settings.ship_runtime_env`: explicit,
else the JobConfig's, else ``ZRAY_JOB_RUNTIME_ENV`` from ``zray job submit``),
and which output reaches the driver.  Parameters zray accepts without effect
are listed in the README ("Coming from Ray").  It starts nothing itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any, Dict, Iterator, Optional, Tuple

from zray._private.runtime_env import resolve

logger = logging.getLogger("zray")


_handler: Optional[logging.Handler] = None   # the one handler init added, if any


class Settings:
    """What ``init`` was asked for beyond resources, checked."""

    def __init__(self, *, namespace: Optional[str] = None, runtime_env: Any = None,
                 job_config: Any = None, labels: Any = None, system_config: Any = None,
                 temp_dir: Optional[str] = None, log_to_driver: bool = True,
                 include_dashboard: Optional[bool] = None, dashboard_host: str = "127.0.0.1",
                 dashboard_port: Optional[int] = None) -> None:
        job_namespace, job_env = job_config_fields(job_config)
        self.namespace = check_namespace(namespace if namespace is not None else job_namespace)
        if runtime_env is None:
            runtime_env = job_env
        if runtime_env is None:
            runtime_env = resolve.job_env_from_environment()
        self.runtime_env = resolve.check(runtime_env, "zray.init")
        self.env_vars: Dict[str, str] = dict(self.runtime_env.get("env_vars", {}))
        self.labels = check_labels(labels)
        if system_config is not None and not isinstance(system_config, Mapping):
            raise TypeError(f"zray.init: _system_config must be a dict, got "
                            f"{type(system_config).__name__}")
        if temp_dir is not None and (not isinstance(temp_dir, str) or not temp_dir):
            raise TypeError(f"zray.init: _temp_dir must be a directory path, got {temp_dir!r}")
        self.temp_dir = temp_dir
        self.log_to_driver = bool(log_to_driver)
        self.dashboard = check_dashboard(include_dashboard, dashboard_host, dashboard_port)

    def check_connecting(self) -> None:
        """What only a session ``init`` starts can honour."""
        if self.dashboard:
            raise ValueError("zray.init(address=...): a running cluster's dashboard is its "
                             "head's (`zray head` serves one; see --dashboard-port)")
        if self.labels:
            raise ValueError("zray.init(address=...) connects to a running cluster, whose "
                             "nodes were given their labels when they started; do not pass "
                             "labels")

    def ship_runtime_env(self, connecting: bool) -> None:
        """The job's runtime_env, for every task and actor this driver submits
        (its folders packed and put now).  A session ``init`` starts has its
        env_vars already: they are in its processes' environment."""
        env = self.runtime_env
        if not connecting:
            env = {k: v for k, v in env.items() if k != "env_vars"}
        resolve.set_job_env(env)

    def environment(self) -> Dict[str, str]:
        """Variables the session's processes (and so its workers) start with."""
        env = dict(self.env_vars)
        if self.temp_dir is not None:
            env["ZRAY_TMPDIR"] = os.path.abspath(self.temp_dir)
        return env


def job_config_fields(job_config: Any) -> Tuple[Optional[str], Any]:
    """(namespace, runtime_env) of a Ray JobConfig (or a dict with those keys)."""
    if job_config is None:
        return None, None
    if isinstance(job_config, Mapping):
        return job_config.get("ray_namespace"), job_config.get("runtime_env")
    return getattr(job_config, "ray_namespace", None), getattr(job_config, "runtime_env", None)


def check_dashboard(include: Optional[bool], host: str, port: Optional[int]) -> str:
    """``HOST:PORT`` for the session's head to serve the dashboard on, or "".

    An embedded session has no cluster token, so its dashboard stays on
    loopback: anyone who could reach it elsewhere could read the session.
    """
    if not include:
        return ""
    from zray._private.dashboard.server import DEFAULT_PORT, is_loopback

    if not isinstance(host, str) or not is_loopback(host):
        raise ValueError(f"zray.init: dashboard_host={host!r} is not loopback; a session "
                         f"started by init has no token to guard it (start the cluster with "
                         f"`zray head --dashboard-host ...` to serve it beyond this machine)")
    if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
        raise ValueError(f"zray.init: dashboard_port must be a port number, got {port!r}")
    return f"{host}:{DEFAULT_PORT if port is None else port}"


def check_namespace(namespace: Any) -> Optional[str]:
    if namespace is None:
        return None
    if not isinstance(namespace, str) or not namespace:
        raise TypeError(f"zray.init: namespace must be a non-empty string, got {namespace!r}")
    return namespace


def check_labels(labels: Any) -> Dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise TypeError(f"zray.init: labels must be a dict of str to str, got {labels!r}")
    return dict(labels)


@contextlib.contextmanager
def scoped_environ(updates: Dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``updates`` while processes are started, then as it was."""
    saved = {name: os.environ.get(name) for name in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def configure_logging(level: Any, fmt: Optional[str]) -> None:
    """The ``zray`` logger's level and, if a format is given, its own handler."""
    global _handler
    if isinstance(level, str):
        level = level.upper()
    try:
        logger.setLevel(level)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"zray.init: logging_level {level!r} is not a logging level: "
                         f"{exc}") from None
    if fmt is None:
        return
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter(fmt))
    logger.addHandler(_handler)
