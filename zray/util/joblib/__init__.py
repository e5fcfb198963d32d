"""joblib on zray: ``register_zray()`` adds a joblib backend named ``"zray"``
(and ``"ray"``) whose batches run as zray tasks, anywhere on the cluster.

    import joblib
    from zray.util.joblib import register_zray

    register_zray()
    with joblib.parallel_backend("zray"):
        search = GridSearchCV(SVC(), grid, n_jobs=-1).fit(X, y)

joblib is an optional dependency (``pip install zray[joblib]``); it is
imported only with this package.  The backend lives in ``backend.py``.
"""

from __future__ import annotations

try:
    import joblib
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("zray.util.joblib needs joblib: pip install 'zray[joblib]'") from exc

from zray.util.joblib.backend import ZrayBackend

BACKEND_NAMES = ("zray", "ray")


def register_zray() -> None:
    """Make ``joblib.parallel_backend("zray")`` (and ``"ray"``) run on zray."""
    for name in BACKEND_NAMES:
        joblib.register_parallel_backend(name, ZrayBackend)


def register_ray() -> None:
    """Ray's name for ``register_zray``."""
    register_zray()


__all__ = ["register_zray", "register_ray", "ZrayBackend"]
