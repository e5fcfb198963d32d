"""The runtime environment a task spec carries (``TaskSpec.runtime_env``).

Only what a node needs to build the environment travels: the packages by
content hash (their bytes are zray objects, the spec's last ``deps``, one per
package in order), the pip requirements, and ``key``, which names the whole
environment: workers are kept per key.  ``env_vars`` travel in the spec's own
``env_vars`` field (set around each call, on any worker).
"""

from __future__ import annotations

from typing import List, Tuple, TypedDict


class RuntimeEnvPackage(TypedDict):
    kind: str        # "working_dir" (the worker's folder and on sys.path) or "py_module"
    digest: str      # hex sha256 of the archive: where it is cached on a node
    name: str        # what the user named (a folder, a .zip or a .whl), for messages


class RuntimeEnvSpec(TypedDict, total=False):
    key: str                           # hex: the environment's name on every node
    packages: List[RuntimeEnvPackage]  # their objects are the spec's last len(packages) deps
    pip: List[str]                     # requirements, installed into a cached venv per node
    pip_options: List[str]             # extra ``pip install`` arguments
    pip_check: bool


RUNTIME_ENV_KINDS = ("working_dir", "py_module")


def is_hex_hash(value: str, lengths: Tuple[int, ...]) -> bool:
    """Whether ``value`` is a hash in hex of one of ``lengths`` (safe as a folder name)."""
    try:
        return len(value) in lengths and len(bytes.fromhex(value)) * 2 == len(value)
    except ValueError:
        return False
