"""A folder (or a .zip) packed into one archive named by its content's hash,
and the archive unpacked once per node into a cache folder.

The archive is deterministic (entries sorted, fixed times and modes) so the
same content always has the same name: a node that has unpacked it before
skips both the transfer and the unpacking.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence, Tuple

#: The largest archive a job may ship (ZRAY_RUNTIME_ENV_MAX_BYTES overrides, read
#: when a folder is packed).
MAX_PACKAGE_BYTES = 100 * 1024 * 1024


def max_package_bytes() -> int:
    text = os.environ.get("ZRAY_RUNTIME_ENV_MAX_BYTES")
    try:
        return int(text) if text else MAX_PACKAGE_BYTES
    except ValueError:
        raise PackageError(f"ZRAY_RUNTIME_ENV_MAX_BYTES must be a number of bytes, "
                           f"got {text!r}") from None

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_SKIPPED_DIRS = ("__pycache__", ".git")


class Package(NamedTuple):
    digest: str      # hex sha256 of the archive's bytes
    data: bytes      # the zip archive


class PackageError(ValueError):
    """A folder that cannot be packed: missing, not a folder or zip, or too big."""


def excluded(relative: str, patterns: Sequence[str]) -> bool:
    """Whether a path (relative to the packed folder, with '/') matches an exclude.

    A pattern matches the whole relative path, any leading part of it (so
    ``data`` excludes the folder and all below it), or the file's own name.
    """
    parts = relative.split("/")
    for pattern in patterns:
        pattern = pattern.strip("/")
        if fnmatch.fnmatchcase(parts[-1], pattern):
            return True
        for end in range(1, len(parts) + 1):
            if fnmatch.fnmatchcase("/".join(parts[:end]), pattern):
                return True
    return False


def _files(root: str, patterns: Sequence[str]) -> Iterator[Tuple[str, str]]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS
                         and not excluded(_relative(root, folder, d), patterns))
        for name in sorted(files):
            relative = _relative(root, folder, name)
            if not excluded(relative, patterns):
                yield relative, os.path.join(folder, name)


def _relative(root: str, folder: str, name: str) -> str:
    return os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")


def pack(path: str, excludes: Iterable[str] = (), what: str = "working_dir",
         limit: Optional[int] = None, prefix: str = "") -> Package:
    """The archive of a folder (its contents at the archive's top, or in a folder
    ``prefix`` there) or of a .zip file (as it is)."""
    if limit is None:
        limit = max_package_bytes()
    if not isinstance(path, (str, os.PathLike)):
        raise PackageError(f"runtime_env {what} must be a path, got {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            data = f.read()
    elif os.path.isdir(path):
        data = _zip_folder(path, list(excludes), what, limit, prefix)
    elif os.path.exists(path):
        raise PackageError(f"runtime_env {what} {path!r} is neither a folder nor a .zip file")
    else:
        raise PackageError(f"runtime_env {what} {path!r} does not exist")
    if len(data) > limit:
        raise PackageError(f"runtime_env {what} {path!r} packs to {len(data) / 2**20:.1f} MiB, "
                           f"over the {limit / 2**20:.0f} MiB limit: leave large files out "
                           f"with 'excludes' (or raise ZRAY_RUNTIME_ENV_MAX_BYTES)")
    return Package(hashlib.sha256(data).hexdigest(), data)


def _zip_folder(root: str, patterns: Sequence[str], what: str, limit: int,
                prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for relative, full in _files(root, patterns):
            total += os.path.getsize(full)
            if total > 4 * limit:     # stop reading long before the archive could fit
                raise PackageError(f"runtime_env {what} {root!r} holds over "
                                   f"{4 * limit / 2**20:.0f} MiB of files, over the "
                                   f"{limit / 2**20:.0f} MiB limit: leave them out with "
                                   f"'excludes'")
            info = zipfile.ZipInfo(f"{prefix}/{relative}" if prefix else relative, _FIXED_TIME)
            info.external_attr = (0o755 if os.access(full, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(full, "rb") as f:
                archive.writestr(info, f.read())
    return buffer.getvalue()


def unpack(data: bytes, digest: str, cache_root: str) -> str:
    """The folder holding the archive's contents: ``cache_root/<digest>``,
    unpacked the first time (atomically: a half-unpacked folder is never seen)."""
    if hashlib.sha256(data).hexdigest() != digest:
        raise PackageError(f"runtime_env package {digest[:12]}: its bytes do not match its hash")
    target = os.path.join(cache_root, digest)
    if os.path.isdir(target):
        return target
    os.makedirs(cache_root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=cache_root)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                if name.startswith("/") or ".." in name.split("/"):
                    raise PackageError(f"runtime_env package {digest[:12]}: entry {name!r} "
                                       f"points outside its folder")
            archive.extractall(scratch)
        os.rename(scratch, target)
    except FileExistsError:
        pass                                   # another process unpacked it first
    except OSError as e:
        if not os.path.isdir(target):
            raise PackageError(f"runtime_env package {digest[:12]}: cannot unpack into "
                               f"{cache_root}: {e}") from e
    finally:
        if os.path.isdir(scratch):
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def unpacked(digest: str, cache_root: str) -> bool:
    """Whether this node has the package already."""
    return os.path.isdir(os.path.join(cache_root, digest))
