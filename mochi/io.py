"""Small file helpers shared by every stage: atomic writes, content hashes, JSON-lines logs."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mochi.errors import MochiError

log = logging.getLogger("mochi")


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename.

    If the body raises, the temporary file is removed and ``path`` is left untouched, so a
    failed or interrupted write never leaves a half-written result behind. The file gets the
    permissions of any newly created file (``0666`` less the umask).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        problem = write_problem(path, err)
        if problem is not None:
            raise MochiError(problem) from err
        raise
    try:
        # mkstemp creates the file 0600; a result must get the mode any new file gets (0666 less the umask),
        # so colleagues on a shared cluster can read checkpoints, records and exports.
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        problem = write_problem(path, err)
        if problem is not None:
            raise MochiError(problem) from err
        raise


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def write_problem(path: Path, err: BaseException) -> str | None:
    """A user-facing message for a write that failed for lack of space or permission, else None."""
    kept = "; the previous file (if any) is unchanged" if path.exists() else "; nothing was written"
    if isinstance(err, OSError) and err.errno in _NO_SPACE:
        return f"cannot write {path}: no space left on its disk{kept}. Free some space or write elsewhere"
    if isinstance(err, OSError) and err.errno in _NOT_WRITABLE:
        return f"cannot write {path}: {err.strerror} (read-only or not yours){kept}. Choose a writable folder"
    if isinstance(err, RuntimeError) and "unexpected pos" in str(err):
        # torch's zip writer reports a short write (a full disk) this way
        return f"cannot write {path}: the write was cut short, most likely a full disk{kept}. Free some space"
    return None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The records of a JSON-lines file (one JSON value per line; blank lines skipped).

    A torn last line (the writer was killed mid-write) is dropped with a warning, so a run's log stays
    readable while, or after, it is written; a damaged line before the last is an error naming the file
    and line.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                log.warning("%s: dropping a torn last line (its writer was stopped mid-write)", path)
                continue
            raise MochiError(
                f"{path} line {number} is not JSON: the file is damaged. Repair or remove that line"
            ) from None
    return records
