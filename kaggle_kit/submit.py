"""Stage 5: turn the blend's test predictions into a validated Kaggle submission file (and upload it).

The file is ``submissions/<exp>-<YYYYmmdd-HHMMSS>.csv`` (or ``submissions/<name>``), header ``id,label``,
every test id exactly once in the fold plan's order (``sample_submission.csv`` order when the data has one).
For log loss the labels are probabilities clipped to [c, 1 - c]; for accuracy (the 2013 contest) hard 0/1
labels. It is written to a temporary file, read back and checked (header, ids and their order, range, no
NaN), and only then renamed into place; an existing file is never overwritten.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

import numpy as np

from kaggle_kit.artifacts import KitError, check_name, experiment_lock
from kaggle_kit.kaggle_api import DEFAULT_COMPETITION
from kaggle_kit.store import load_blend, require_experiment

SUBMISSIONS_DIR = "submissions"
METRICS = ("logloss", "accuracy")
DECIMALS = 6  # labels are written with '%.6f'
MIN_CLIP = 10.0 ** -DECIMALS
_SHOWN_IDS = 10
_MAX_NAME_BYTES = 200


# ------------------------------------------------------------------------------------------------ the core
def grid_clip(clip: float) -> tuple[float, float]:
    """The label range [lo, hi] actually written for clip level ``clip``: lo = clip rounded up to 6 decimals.

    subtle: '%.6f' rounds, so a label clipped at an off-grid c could be written just below c; with both
    bounds on the 6-decimal grid, a rounded label can never leave [lo, hi], and the text of lo and hi parses
    back to exactly the same floats.
    """
    if not (math.isfinite(clip) and MIN_CLIP <= clip < 0.5):
        raise KitError(f"--clip must be a number in [{MIN_CLIP:g}, 0.5), got {clip}", code=2)
    k = math.ceil(round(clip * 10**DECIMALS, 6))
    return k / 10**DECIMALS, (10**DECIMALS - k) / 10**DECIMALS


def check_finite(p: np.ndarray, ids: Sequence[str]) -> None:
    """Refuse (n,) predictions holding NaN or inf, naming how many and which ids."""
    bad = np.flatnonzero(~np.isfinite(p))
    if bad.size:
        shown = ", ".join(ids[i] for i in bad[:_SHOWN_IDS]) + (", ..." if bad.size > _SHOWN_IDS else "")
        raise KitError(
            f"{bad.size} of {len(p)} test predictions are NaN or inf (ids {shown}); no submission written: "
            "check the cv models' test predictions, then re-run 'kaggle-kit cv' and 'kaggle-kit blend'"
        )


def make_labels(p: np.ndarray, *, metric: str, clip: float) -> np.ndarray:
    """Labels for (n,) finite probabilities: clipped to ``grid_clip(clip)`` (logloss) or hard 0/1 (accuracy)."""
    p = np.asarray(p, dtype=np.float64)
    if metric == "accuracy":
        return (p >= 0.5).astype(np.int64)
    if metric == "logloss":
        lo, hi = grid_clip(clip)
        return np.clip(p, lo, hi)
    raise KitError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}", code=2)


def validate_submission(path: Path, *, ids: Sequence[str], metric: str, clip: float) -> None:
    """Read a written submission back and check header, every id once in order, labels in range, no NaN."""
    import pandas as pd

    if metric not in METRICS:
        raise KitError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}", code=2)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except ValueError as exc:  # pandas' parser and empty-data errors and UnicodeDecodeError are all ValueErrors
        raise KitError(f"the submission failed validation ({path} is not a readable CSV file: "
                       f"{' '.join(str(exc).split())}); nothing was written") from None
    problems = []
    if list(frame.columns) != ["id", "label"]:
        problems.append(f"header is {','.join(frame.columns)!r}, expected 'id,label'")
    elif frame["id"].duplicated().any() or frame["id"].tolist() != list(ids):
        written = frame["id"]
        if written.duplicated().any():  # subtle: even when ``ids`` repeats them too: Kaggle wants each id once
            problems.append(f"{int(written.duplicated().sum())} ids are repeated")
        if set(written) != set(ids):
            problems.append(f"{len(set(ids) - set(written))} test ids missing, {len(set(written) - set(ids))} unknown")
        if written.tolist() != list(ids):
            problems.append("the ids are not in the test order")
    elif frame.empty:
        problems.append("it has no rows")
    else:
        labels = pd.to_numeric(frame["label"], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(labels).any():
            problems.append(f"{int(np.isnan(labels).sum())} labels are empty or not numbers")
        elif metric == "accuracy" and not np.isin(labels, (0, 1)).all():
            problems.append("labels are not all 0 or 1")
        elif metric == "logloss":
            lo, hi = grid_clip(clip)
            if labels.min() < lo or labels.max() > hi:
                problems.append(f"labels span [{labels.min()}, {labels.max()}], outside [{lo}, {hi}]")
    if problems:
        raise KitError(f"the submission failed validation ({'; '.join(problems)}); nothing was written")


def submission_path(*, exp: str, name: str | None, now: datetime, root: Path | str = ".") -> Path:
    """``<root>/submissions/<name>``, or ``<exp>-<YYYYmmdd-HHMMSS>.csv`` without a name.

    A name must be a plain file name ending in '.csv': submission files are written only under submissions/.
    """
    if name is None:
        name = f"{exp}-{now:%Y%m%d-%H%M%S}.csv"
    elif not name or any(s in name for s in ("/", "\\", "..", "\0")) or name.startswith("."):
        raise KitError(f"--name {name!r} must be a plain file name (no '/', '\\', '..', no leading '.'): "
                       f"submission files are written only under ./{SUBMISSIONS_DIR}/", code=2)
    elif not name.endswith(".csv"):
        raise KitError(f"--name {name!r} must end in '.csv'", code=2)
    elif len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        # subtle: the temporary file beside it has a longer name, and file systems stop at 255 bytes.
        raise KitError(f"--name is {len(name.encode('utf-8', 'surrogateescape'))} bytes long; use at most "
                       f"{_MAX_NAME_BYTES}", code=2)
    return Path(root) / SUBMISSIONS_DIR / name


def default_submissions(exp: str, *, root: Path | str = ".") -> list[Path]:
    """The files ``submit`` wrote for ``exp`` under its default name (``<exp>-<YYYYmmdd-HHMMSS>.csv``), newest
    (by modification time) first. subtle: the exact pattern, not ``<exp>-*.csv``, which would also take the
    files of an experiment named ``<exp>-other``."""
    folder = Path(root) / SUBMISSIONS_DIR
    pattern = re.compile(rf"{re.escape(exp)}-\d{{8}}-\d{{6}}\.csv")
    found = [p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def write_submission(path: Path, ids: Sequence[str], labels: np.ndarray, *, metric: str, clip: float) -> None:
    """Write ``id,label`` rows atomically, validating the temporary file before it takes its name.

    Refuses if ``path`` exists. subtle: the check is repeated just before the rename, which shrinks the
    window in which a concurrent writer could be overwritten to the rename itself.
    """
    import pandas as pd

    from kaggle_kit.artifacts import atomic_path

    exists = f"{path} already exists; submission files are never overwritten: choose another --name"
    if path.exists():
        raise KitError(exists)
    frame = pd.DataFrame({"id": list(ids), "label": labels})
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, float_format=f"%.{DECIMALS}f", lineterminator="\n")
        validate_submission(tmp, ids=ids, metric=metric, clip=clip)
        if path.exists():
            raise KitError(exists)


# ------------------------------------------------------------------------------------------------- the edge
@dataclass(frozen=True)
class Submission:
    """A written submission: its path, the label range written ((0, 1) for accuracy) and the row count."""

    path: Path
    metric: str
    label_range: tuple[float, float]
    n_rows: int
    uploaded_to: str | None

    def lines(self) -> list[str]:
        """What ``kaggle-kit submit`` prints: rows and range, the upload if any, the file's path last."""
        lo, hi = self.label_range
        out = [f"{self.n_rows} rows, labels in [{lo:g}, {hi:g}] ({self.metric}), read back and validated"]
        if self.uploaded_to:
            out.append(f"uploaded to {self.uploaded_to}; "
                       f"scores: https://www.kaggle.com/c/{self.uploaded_to}/submissions")
        return [*out, str(self.path)]


def resolve_clip(clip: str, chosen: float) -> float:
    """'auto' -> the blend's ``chosen`` clip; otherwise the number given."""
    if clip == "auto":
        return float(chosen)
    try:
        return float(clip)
    except ValueError:
        raise KitError(f"--clip must be 'auto' or a number such as 0.005, got {clip!r}", code=2) from None


def make_submission(exp_dir: Path, *, clip: str = "auto", name: str | None = None, metric: str = "logloss",
                    upload: bool = False, message: str | None = None, competition: str = DEFAULT_COMPETITION,
                    root: Path | str = ".", now: datetime | None = None) -> Submission:
    """``kaggle-kit submit``: write ``<root>/submissions/...csv`` from the experiment's blend (named
    ``<exp>-<time>.csv`` without ``name``); with ``upload``, submit it to ``competition``. Holds the lock."""
    if metric not in METRICS:
        raise KitError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}", code=2)
    if upload and not (message and message.strip()):
        raise KitError("--upload needs -m MESSAGE, the submission's description on Kaggle", code=2)
    if message is not None and not upload:
        raise KitError("-m MESSAGE is only used with --upload; add --upload to submit to Kaggle", code=2)
    if upload:
        check_name("competition", competition)
    path = submission_path(exp=exp_dir.name, name=name, now=now or datetime.now(), root=root)
    require_experiment(exp_dir)
    with experiment_lock(exp_dir, command="submit"):
        blend = load_blend(exp_dir)
        level = resolve_clip(clip, blend.clip)
        label_range = grid_clip(level) if metric == "logloss" else (0.0, 1.0)
        check_finite(blend.test, blend.test_ids)
        labels = make_labels(blend.test, metric=metric, clip=level)
        write_submission(path, blend.test_ids, labels, metric=metric, clip=level)
        if upload:
            from kaggle_kit.kaggle_api import submit_file

            try:
                submit_file(path, competition=competition, message=message)
            except KitError as exc:
                raise KitError(f"{exc} (the file is kept: {path})", code=exc.code) from None
    return Submission(path=path, metric=metric, label_range=label_range, n_rows=len(labels),
                      uploaded_to=competition if upload else None)
