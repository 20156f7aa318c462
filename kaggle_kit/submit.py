"""Stage 5: turn the blend's test predictions into a validated Kaggle submission file (and upload it).

The file is ``submissions/<exp>-<YYYYmmdd-HHMMSS>.csv`` (or ``submissions/<name>``). It copies the sample
submission's header, id column and row order exactly (``id,has_cactus``, ``image_name,target``, ...); without
one it is ``id,label`` over every test id in the fold plan's order. A sample-submission id without a test image
gets the training prior. The labels follow the metric: for log loss probabilities clipped to [c, 1 - c]; for
AUC the blend's scores as they are (no clip, full precision: only their order counts); for accuracy hard 0/1
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
from kaggle_kit.metrics import METRICS, hard_labels
from kaggle_kit.store import load_blend, load_experiment, load_plan, require_experiment

SUBMISSIONS_DIR = "submissions"
DEFAULT_HEADER = ("id", "label")
DECIMALS = 6  # log loss labels are written with '%.6f'
MIN_CLIP = 10.0 ** -DECIMALS
_SHOWN_IDS = 10
_MAX_NAME_BYTES = 200
# Which blends can make which submissions: the blend's own metric, accuracy from a log-loss blend (its
# calibrated probabilities thresholded) and AUC from any blend (any monotone score ranks the rows).
_COMPATIBLE = {"logloss": ("logloss", "accuracy", "auc"), "accuracy": ("accuracy", "auc"), "auc": ("auc",)}


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise KitError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}", code=2)


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


def fill_missing(p: np.ndarray, test_ids: Sequence[str], *, submission_ids: Sequence[str],
                 prior: float) -> np.ndarray:
    """(len(submission_ids),) predictions in the submission's order: ``p`` (n,) for the ``test_ids`` (n,),
    ``prior`` for every other id (a sample-submission id without a test image)."""
    by_id = dict(zip(test_ids, np.asarray(p, dtype=np.float64)))
    if len(by_id) != len(test_ids) or not set(by_id) <= set(submission_ids):
        raise ValueError("test_ids must be distinct and all among submission_ids")
    return np.array([by_id.get(i, prior) for i in submission_ids], dtype=np.float64)


def make_labels(p: np.ndarray, *, metric: str, clip: float | None) -> np.ndarray:
    """Labels for (n,) finite probabilities: clipped to ``grid_clip(clip)`` (logloss), as they are (auc) or
    hard 0/1 (accuracy)."""
    _check_metric(metric)
    p = np.asarray(p, dtype=np.float64)
    if metric == "accuracy":
        return hard_labels(p)
    if metric == "auc":
        return p
    lo, hi = grid_clip(clip)
    return np.clip(p, lo, hi)


def validate_submission(path: Path, *, ids: Sequence[str], metric: str, clip: float | None,
                        header: Sequence[str] = DEFAULT_HEADER) -> None:
    """Read a written submission back and check the header, every id once in order, labels in range, no NaN."""
    import pandas as pd

    _check_metric(metric)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except ValueError as exc:  # pandas' parser and empty-data errors and UnicodeDecodeError are all ValueErrors
        raise KitError(f"the submission failed validation ({path} is not a readable CSV file: "
                       f"{' '.join(str(exc).split())}); nothing was written") from None
    problems = []
    id_col, label_col = header
    if list(frame.columns) != list(header):
        problems.append(f"header is {','.join(frame.columns)!r}, expected {','.join(header)!r}")
    elif frame[id_col].duplicated().any() or frame[id_col].tolist() != list(ids):
        written = frame[id_col]
        if written.duplicated().any():  # subtle: even when ``ids`` repeats them too: Kaggle wants each id once
            problems.append(f"{int(written.duplicated().sum())} ids are repeated")
        if set(written) != set(ids):
            problems.append(f"{len(set(ids) - set(written))} test ids missing, {len(set(written) - set(ids))} unknown")
        if written.tolist() != list(ids):
            problems.append("the ids are not in the test order")
    elif frame.empty:
        problems.append("it has no rows")
    else:
        labels = pd.to_numeric(frame[label_col], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(labels).any():
            problems.append(f"{int(np.isnan(labels).sum())} labels are empty or not numbers")
        elif metric == "accuracy" and not np.isin(labels, (0, 1)).all():
            problems.append("labels are not all 0 or 1")
        elif metric == "auc" and (labels.min() < 0 or labels.max() > 1):
            problems.append(f"labels span [{labels.min()}, {labels.max()}], outside [0, 1]")
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


def write_submission(path: Path, ids: Sequence[str], labels: np.ndarray, *, metric: str, clip: float | None,
                     header: Sequence[str] = DEFAULT_HEADER) -> None:
    """Write ``header`` and (id, label) rows atomically, validating the temporary file before it takes its name.

    Refuses if ``path`` exists. subtle: the check is repeated just before the rename, which shrinks the
    window in which a concurrent writer could be overwritten to the rename itself.
    """
    import pandas as pd

    from kaggle_kit.artifacts import atomic_path

    exists = f"{path} already exists; submission files are never overwritten: choose another --name"
    if path.exists():
        raise KitError(exists)
    id_col, label_col = header
    frame = pd.DataFrame({id_col: list(ids), label_col: labels})
    # subtle: AUC ranks the rows, so scores are written in full (shortest round-trip repr); 6 decimals would
    # tie saturated probabilities such as 0.9999996 and 0.9999999.
    float_format = None if metric == "auc" else f"%.{DECIMALS}f"
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")
        validate_submission(tmp, ids=ids, metric=metric, clip=clip, header=header)
        if path.exists():
            raise KitError(exists)


# ------------------------------------------------------------------------------------------------- the edge
@dataclass(frozen=True)
class Submission:
    """A written submission: its path, metric, the label range written ((0, 1) for accuracy and AUC), the row
    count, the header, and how many ids got the training prior because they have no test image."""

    path: Path
    metric: str
    label_range: tuple[float, float]
    n_rows: int
    uploaded_to: str | None
    header: tuple[str, str] = DEFAULT_HEADER
    n_prior: int = 0

    def warnings(self) -> list[str]:
        """Lines for stderr: the sample-submission ids that got the training prior."""
        if not self.n_prior:
            return []
        return [f"warning: {self.n_prior} ids of the sample submission have no test image; they got the training "
                "prior"]

    def lines(self) -> list[str]:
        """What ``kaggle-kit submit`` prints: rows, header and range, the upload if any, the file's path last."""
        lo, hi = self.label_range
        out = [f"{self.n_rows} rows '{','.join(self.header)}', labels in [{lo:g}, {hi:g}] ({self.metric}), read "
               "back and validated"]
        if self.uploaded_to:
            out.append(f"uploaded to {self.uploaded_to}; "
                       f"scores: https://www.kaggle.com/c/{self.uploaded_to}/submissions")
        return [*out, str(self.path)]


def resolve_clip(clip: str, chosen: float | None) -> float:
    """'auto' -> the blend's ``chosen`` clip (None: the blend chose none); otherwise the number given."""
    if clip == "auto":
        if chosen is None:
            raise KitError("the blend was not made for log loss and chose no clip; pass --clip 0.005 (say) or "
                           "re-run 'kaggle-kit blend --metric logloss'", code=2)
        return float(chosen)
    try:
        return float(clip)
    except ValueError:
        raise KitError(f"--clip must be 'auto' or a number such as 0.005, got {clip!r}", code=2) from None


def experiment_dataset(exp_dir: Path):
    """The experiment's data folder as ``kaggle_kit.data.discover`` reads it (for the sample submission's header
    and ids), or None for an experiment that does not remember one."""
    from kaggle_kit.data import discover_remembered

    remembered = load_experiment(exp_dir)
    if remembered is None:
        return None
    try:
        return discover_remembered(remembered)
    except KitError as exc:
        raise KitError(f"the submission copies the data folder's sample submission, but: {exc}",
                       code=exc.code) from None


def make_submission(exp_dir: Path, *, clip: str = "auto", name: str | None = None, metric: str | None = None,
                    upload: bool = False, message: str | None = None, competition: str = DEFAULT_COMPETITION,
                    root: Path | str = ".", now: datetime | None = None, dataset=None) -> Submission:
    """``kaggle-kit submit``: write ``<root>/submissions/...csv`` from the experiment's blend (named
    ``<exp>-<time>.csv`` without ``name``); with ``upload``, submit it to ``competition``. Holds the lock.

    ``metric`` None: the blend's. ``dataset`` (a ``kaggle_kit.data.Dataset``) gives the header, the ids and
    their order; None reads the experiment's data folder (``id,label`` over the fold plan's test ids when the
    experiment remembers none).
    """
    if metric is not None:
        _check_metric(metric)
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
        made_for = blend.metric
        metric = made_for if metric is None else metric
        if metric not in _COMPATIBLE[made_for]:
            raise KitError(f"the blend in {blend.path} was made for {made_for}, which cannot give a {metric} "
                           f"submission; re-run 'kaggle-kit blend --metric {metric}'", code=2)
        level = resolve_clip(clip, blend.clip) if metric == "logloss" else None
        label_range = grid_clip(level) if metric == "logloss" else (0.0, 1.0)
        check_finite(blend.test, blend.test_ids)
        dataset = experiment_dataset(exp_dir) if dataset is None else dataset
        header, ids = DEFAULT_HEADER, list(blend.test_ids)
        if dataset is not None:
            if tuple(dataset.test_ids) != tuple(blend.test_ids):
                raise KitError(f"the test images in {dataset.root} changed since 'kaggle-kit cv' ({dataset.n_test} "
                               f"now, {len(blend.test_ids)} in the fold plan); re-run 'kaggle-kit features', "
                               "'kaggle-kit cv' and 'kaggle-kit blend'")
            header, ids = tuple(dataset.submission_header), list(dataset.submission_ids or dataset.test_ids)
        prior = float(np.mean(load_plan(exp_dir).y))
        p = fill_missing(blend.test, blend.test_ids, submission_ids=ids, prior=prior)
        labels = make_labels(p, metric=metric, clip=level)
        write_submission(path, ids, labels, metric=metric, clip=level, header=header)
        if upload:
            from kaggle_kit.kaggle_api import submit_file

            try:
                submit_file(path, competition=competition, message=message)
            except KitError as exc:
                raise KitError(f"{exc} (the file is kept: {path})", code=exc.code) from None
    return Submission(path=path, metric=metric, label_range=label_range, n_rows=len(labels),
                      uploaded_to=competition if upload else None, header=header,
                      n_prior=len(ids) - len(blend.test_ids))
