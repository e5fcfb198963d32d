"""Dask on zray: a Dask scheduler whose tasks are zray tasks.

    import dask
    from zray.util.dask import zray_dask_get, enable_dask_on_zray

    dask.compute(x, scheduler=zray_dask_get)   # one computation
    enable_dask_on_zray()                      # every computation from now on

Ray's names (``ray_dask_get``, ``enable_dask_on_ray``, ``disable_dask_on_ray``)
are the same functions.  Needs dask, the ``zray[dask]`` extra; this package is
the only part of zray that imports it.  The scheduler itself lives in
``scheduler.py``; this module owns the switching of dask's configuration.
"""

from __future__ import annotations

from typing import Any, Optional

try:
    import dask
    from dask._task_spec import Alias, DataNode, convert_legacy_graph  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("zray.util.dask needs dask, a version whose graphs are dask._task_spec "
                      "nodes: pip install -U 'zray[dask]'") from exc

from zray.util.dask.scheduler import zray_dask_get

ray_dask_get = zray_dask_get


def enable_dask_on_zray(shuffle: Optional[str] = "tasks") -> Any:
    """Make zray the scheduler of every Dask computation (``dask.config.set``).

    Dask DataFrame shuffles use ``shuffle`` (``"tasks"`` by default: the
    default ``"disk"`` writes partitions to one machine's disk, which other
    nodes cannot read).  Returns dask's config setting, so ``with
    enable_dask_on_zray():`` limits it to a block.
    """
    return dask.config.set({"scheduler": zray_dask_get, "dataframe.shuffle.method": shuffle})


def disable_dask_on_zray() -> Any:
    """Give Dask back its default scheduler and shuffle method."""
    return dask.config.set({"scheduler": None, "dataframe.shuffle.method": None})


enable_dask_on_ray = enable_dask_on_zray
disable_dask_on_ray = disable_dask_on_zray

__all__ = ["zray_dask_get", "ray_dask_get", "enable_dask_on_zray", "disable_dask_on_zray",
           "enable_dask_on_ray", "disable_dask_on_ray"]
