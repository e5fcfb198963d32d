"""Public names of a package loaded when first asked for (PEP 562).

``import zray`` must stay cheap: a package lists which names live in which
submodule, and this makes the ``__getattr__`` that imports them on first use
and keeps them in the package from then on.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Dict, Sequence


def lazy_getattr(package: str, names: Dict[str, str],
                 submodules: Sequence[str]) -> Callable[[str], Any]:
    """``__getattr__`` for ``package``: ``names`` maps a name to the module that
    defines it; ``submodules`` are the package's own modules loaded by name."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        vars(sys.modules[package])[name] = value
        return value

    return __getattr__
