"""The experiment's fold plan: one stratified k-fold assignment of the training rows, shared by every model.

With ``cv --groups REGEX`` the folds are group-wise (``StratifiedGroupKFold``): every training image whose file
name gives the same group (the regex's first capture group, else its whole match) sits in the same fold, so no
patient, slide, scene or photographer is both trained on and held out. Use it when the test rows come from other
groups than the training rows (malaria-mini: other patients): a plan by row then scores too optimistically, and
every later decision (blend weights, calibration, clip) is tuned to that optimism.

Blending predictions made on different folds leaks (a model's out-of-fold row was in another model's
training folds), so an experiment has exactly one plan, in ``experiments/<exp>/folds/`` (its files and
manifest: :mod:`kaggle_kit.store`). Every cv result records the hash of the plan it was made on; a new plan
makes all of them stale.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Sequence

import numpy as np

from kaggle_kit.artifacts import KitError
from kaggle_kit.store import FoldPlan, has_plan, load_plan, write_plan

DEFAULT_FOLDS, DEFAULT_REPEATS, DEFAULT_SEED = 5, 1, 0


NO_GROUPS = ("", "none")  # --groups values that ask for a plan by row again


def groups_regex(pattern: str) -> re.Pattern:
    """The compiled ``--groups`` pattern; a one-line error when it is not a regular expression."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise KitError(f"--groups {shlex.quote(pattern)} is not a regular expression: {exc}", code=2) from None


def file_groups(files: Sequence[str], pattern: str) -> list[str]:
    """The group of each training file: ``pattern``'s first capture group (else its whole match) searched in the
    file's name (no folders). A bad pattern, or a file it does not match, is a one-line error."""
    regex = groups_regex(pattern)
    groups = []
    for f in files:
        match = regex.search(Path(f).name)
        group = match and (match.group(1) if regex.groups else match.group(0))
        if not group:
            raise KitError(f"--groups {shlex.quote(pattern)} finds no group in the file name {Path(f).name!r} "
                           f"({f}); every training image needs one", code=2)
        groups.append(group)
    return groups


def make_plan(y: np.ndarray, *, n_folds: int, repeats: int, seed: int,
              groups: Sequence[str] | None = None) -> np.ndarray:
    """Stratified k-fold assignments: int8 (repeats, n) with each row's fold 0..n_folds-1 per repeat.

    Repeat r uses ``StratifiedKFold(n_folds, shuffle=True, random_state=seed + r)``, so every fold holds
    the class ratio of ``y`` (n,) to within one row per class, and the same seed gives the same plan. With
    ``groups`` (n,) it uses ``StratifiedGroupKFold`` (same arguments): a group's rows share a fold, and the folds
    hold the class ratio as nearly as the groups allow.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError(f"y must be a 1-d array of 0/1 labels, got shape {y.shape}")
    if not 2 <= n_folds <= 127:
        raise KitError(f"--folds {n_folds} is out of range; use 2 to 127 folds (5 is the usual choice)", code=2)
    if repeats < 1:
        raise KitError(f"--repeats {repeats} is out of range; use 1 or more", code=2)
    fewest = int(np.bincount(y.astype(np.int64), minlength=2).min())
    if fewest < n_folds:
        raise KitError(f"--folds {n_folds} is more than the {fewest} training images of the smaller class; "
                       f"use --folds {max(2, fewest)} or fewer", code=2)
    if groups is not None:
        if len(groups) != len(y):
            raise ValueError(f"{len(groups)} groups for {len(y)} rows")
        n_groups = len(set(groups))
        if n_groups < n_folds:
            raise KitError(f"--folds {n_folds} is more than the {n_groups} groups --groups finds; use --folds "
                           f"{max(2, n_groups)} or fewer, or a finer --groups pattern", code=2)
    plan = np.empty((repeats, len(y)), dtype=np.int8)
    for r in range(repeats):
        if groups is None:
            splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed + r).split(np.zeros(len(y)), y)
        else:
            splits = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed + r).split(
                np.zeros(len(y)), y, groups)
        for f, (_, held_out) in enumerate(splits):
            plan[r, held_out] = f
    return plan


def ensure_plan(exp_dir: Path, *, y: np.ndarray, train_ids: Sequence[str], test_ids: Sequence[str],
                n_folds: int | None, repeats: int | None, seed: int | None, groups: str | None = None,
                train_files: Sequence[str] = ()) -> tuple[FoldPlan, str]:
    """The experiment's plan for these data and settings, made and written if needed.

    Returns the plan and what happened to it: 'kept', 'new' (there was none) or 'replaced'. A setting
    given as None keeps the existing plan's value (or the default: 5 folds, 1 repeat, seed 0). The existing
    plan is kept when its settings, labels and ids all match; otherwise a new one replaces it, and every cv
    result made on the old one becomes stale. ``groups``: the ``--groups`` pattern applied to ``train_files``
    (see :func:`file_groups`); None keeps the current plan's, '' or 'none' makes a plan by row.
    """
    y = np.asarray(y, dtype=np.int8)
    current = None
    if has_plan(exp_dir):
        try:
            current = load_plan(exp_dir)
        except KitError:
            current = None  # damaged: replaced below
    settings = {
        "n_folds": n_folds if n_folds is not None else current.n_folds if current else DEFAULT_FOLDS,
        "repeats": repeats if repeats is not None else current.repeats if current else DEFAULT_REPEATS,
        "seed": seed if seed is not None else current.seed if current else DEFAULT_SEED,
        "groups": (None if groups in NO_GROUPS else groups) if groups is not None
        else current.groups if current else None,
    }
    if current is not None and current.matches(y=y, train_ids=train_ids, test_ids=test_ids, **settings):
        return current, "kept"
    row_groups = file_groups(train_files, settings["groups"]) if settings["groups"] is not None else None
    plan = make_plan(y, n_folds=settings["n_folds"], repeats=settings["repeats"], seed=settings["seed"],
                     groups=row_groups)
    if row_groups is not None:
        settings["n_groups"] = len(set(row_groups))
    written = write_plan(exp_dir, plan=plan, y=y, train_ids=train_ids, test_ids=test_ids, **settings)
    return written, "replaced" if current is not None else "new"
