"""The on-disk layout of an experiment: arrays, manifests, atomic writes, hashes and the lock.

Every stage writes its arrays first and its ``manifest.json`` last; the manifest's presence is what marks a
result as finished. Every write goes to a temporary file in the same folder, is flushed to disk and then
renamed over the target, so a crash (Ctrl-C, SIGKILL, power loss) leaves either the old file or the new one,
never a half-written file under a finished name.

Layout (``<root>`` is the working folder, ``experiments/`` under it)::

    experiments/<exp>/experiment.json                 the data folder, how to read it, and the metric
    experiments/<exp>/features/<name>/manifest.json   format kaggle-kit/features/1
    experiments/<exp>/features/<name>/{train,test}.npy  [+ {train,test}_flip.npy with --tta flip]
    experiments/<exp>/features/<name>/.partial/<key>/ shards of an unfinished extraction
    experiments/<exp>/lock                            held while a command writes to the experiment
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kaggle_kit import __version__


class KitError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with ``code``."""

    def __init__(self, message: str, *, code: int = 1):
        super().__init__(message)
        self.code = code


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(kind: str, name: str) -> str:
    """Refuse experiment/model names that could escape their folder (``..``, slashes) or confuse a shell."""
    if not _NAME_RE.match(name) or ".." in name:
        raise KitError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-' (at most 100), "
            "starting with a letter or digit",
            code=2,
        )
    return name


def experiment_dir(exp: str, *, root: Path | str = ".") -> Path:
    return Path(root) / "experiments" / check_name("experiment", exp)


def features_dir(exp_dir: Path, name: str) -> Path:
    return exp_dir / "features" / check_name("feature set", name)


# ----------------------------------------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Path | str, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed onto ``target``.

    subtle: the temporary name starts with '.' and ends in '.tmp', so no loader ever mistakes it for a result,
    and on any exception (KeyboardInterrupt included) it is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f"{suffix}.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should be as readable as any file
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(target: Path | str, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: Path | str, obj: Any) -> None:
    write_bytes_atomic(target, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_npy_atomic(target: Path | str, array: np.ndarray) -> None:
    with atomic_path(target, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path | str, *, mmap: bool = True, rerun: str | None = None) -> np.ndarray:
    """Load an array written by the kit: never unpickles, memory-maps by default (features can be large).

    ``rerun``: the command that rewrites the file, named in the error when it cannot be read.
    """
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        advice = f"; re-run '{rerun}'" if rerun else ""
        raise KitError(f"cannot read {path}: {' '.join(str(exc).split())}{advice}") from None


def read_json(path: Path | str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise KitError(f"cannot read {path}: {exc}; delete it and re-run the command that wrote it") from None


# ---------------------------------------------------------------------------------------------------- hashes
def sha256_file(path: Path | str, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_array(a: np.ndarray) -> str:
    """Hash of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_text(json.dumps(obj, sort_keys=True, separators=(",", ":")))


# ------------------------------------------------------------------------------------------------- manifests
def new_manifest(fmt: str, **fields: Any) -> dict[str, Any]:
    return {"format": fmt, "kaggle_kit_version": __version__, **fields}


def read_manifest(path: Path | str, *, fmt: str, rerun: str) -> dict[str, Any]:
    """Read a manifest and check its ``format``; ``rerun`` is the command that rewrites it."""
    path = Path(path)
    if not path.exists():
        raise KitError(f"{path} does not exist; run '{rerun}' first")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise KitError(f"{path} has format {found!r}, expected {fmt!r}; re-run '{rerun}'")
    return manifest


# ------------------------------------------------------------------------------------------------ experiment
EXPERIMENT_FORMAT = "kaggle-kit/experiment/1"


# Optional settings an experiment may remember besides its data folder and positive class (experiment.json
# files written before they existed simply lack them): how to read the data (see kaggle_kit.data.DATA_OPTIONS)
# and the competition's metric (kaggle_kit.metrics.METRICS).
EXPERIMENT_OPTIONAL = ("layout", "labels", "id_col", "target_col", "metric")


def load_experiment(exp_dir: Path) -> dict[str, Any] | None:
    """The experiment's remembered settings (data folder, positive class, and those of EXPERIMENT_OPTIONAL it
    has), or None for a new experiment."""
    path = exp_dir / "experiment.json"
    if not path.exists():
        return None
    return read_manifest(path, fmt=EXPERIMENT_FORMAT, rerun="kaggle-kit features --data DIR")


def save_experiment(exp_dir: Path, *, data_dir: Path, positive: str, layout: str | None = None,
                    labels: str | None = None, id_col: str | None = None, target_col: str | None = None,
                    metric: str | None = None) -> None:
    """Remember the experiment's settings (those given as None are not stored)."""
    optional = {"layout": layout, "labels": labels, "id_col": id_col, "target_col": target_col, "metric": metric}
    write_json_atomic(exp_dir / "experiment.json", new_manifest(
        EXPERIMENT_FORMAT, data_dir=str(data_dir), positive=positive,
        **{k: v for k, v in optional.items() if v is not None}))


# ------------------------------------------------------------------------------------------------------ lock
@contextlib.contextmanager
def experiment_lock(exp_dir: Path, *, command: str) -> Iterator[None]:
    """Hold ``<exp>/lock`` while a command writes; a second process refuses at once rather than interleave.

    The lock is an ``flock`` on the file, so a killed process releases it automatically (no stale locks).
    Once it is held, temporary files (``.*.tmp``, see :func:`atomic_path`) left anywhere in the experiment by
    a killed run are removed: every writer of the experiment holds this lock, so none of them is live.
    """
    import fcntl

    exp_dir.mkdir(parents=True, exist_ok=True)
    path = exp_dir / "lock"
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "another kaggle-kit process"
            raise KitError(
                f"experiment {exp_dir} is busy ({holder}); wait for it to finish or use another --exp",
                code=3,
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} running '{command}'\n")
        fh.flush()
        for stale in exp_dir.rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        yield
    finally:
        fh.close()
