"""The experiment's fold plan: one stratified k-fold assignment of the training rows, shared by every model.

Blending predictions made on different folds leaks (a model's out-of-fold row was in another model's
training folds), so an experiment has exactly one plan, in ``experiments/<exp>/folds/``:

- ``plan.npy`` int8 (repeats, n_train): the fold 0..k-1 of each training row, one row per repeat;
- ``y.npy`` int8 (n_train,) and ``ids.json`` {"train_ids", "test_ids"}: the data the plan was made for;
- ``manifest.json`` (format ``kaggle-kit/folds/1``), written last: n_folds, repeats, seed, n_train, n_test and
  the hashes ``y_sha256``, ``ids_sha256``, ``plan_sha256``.

Every cv result records the ``plan_sha256`` it was made on; a new plan makes all of them stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kaggle_kit.artifacts import (
    KitError,
    load_npy,
    new_manifest,
    read_json,
    read_manifest,
    save_npy_atomic,
    sha256_array,
    sha256_json,
    write_json_atomic,
)

FORMAT = "kaggle-kit/folds/1"
RERUN = "kaggle-kit cv"
# What the writer always puts in the manifest and the loader and its users rely on.
_MANIFEST_KEYS = ("n_folds", "repeats", "seed", "n_train", "n_test", "plan_sha256", "y_sha256", "ids_sha256")


def make_plan(y: np.ndarray, *, n_folds: int, repeats: int, seed: int) -> np.ndarray:
    """Stratified k-fold assignments: int8 (repeats, n) with each row's fold 0..n_folds-1 per repeat.

    Repeat r uses ``StratifiedKFold(n_folds, shuffle=True, random_state=seed + r)``, so every fold holds
    the class ratio of ``y`` (n,) to within one row per class, and the same seed gives the same plan.
    """
    from sklearn.model_selection import StratifiedKFold

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
    plan = np.empty((repeats, len(y)), dtype=np.int8)
    for r in range(repeats):
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed + r)
        for f, (_, held_out) in enumerate(splitter.split(np.zeros(len(y)), y)):
            plan[r, held_out] = f
    return plan


def ids_sha256(train_ids: Sequence[str], test_ids: Sequence[str]) -> str:
    """The hash of ``ids.json``'s content."""
    return sha256_json({"train_ids": list(train_ids), "test_ids": list(test_ids)})


@dataclass(frozen=True)
class FoldPlan:
    """A loaded plan: ``plan`` int (repeats, n_train) the fold of each row per repeat (-1: a row left out),
    ``y`` int8 (n_train,), the ids in the kit's fixed row order (``test_ids`` is the submission order), and the
    manifest."""

    plan: np.ndarray
    y: np.ndarray
    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        return self.manifest["plan_sha256"]

    @property
    def n_folds(self) -> int:
        return self.manifest["n_folds"]

    @property
    def repeats(self) -> int:
        return self.manifest["repeats"]

    def describe(self) -> str:
        r = self.repeats
        return f"{self.n_folds} folds x {r} repeat{'s' if r > 1 else ''}, seed {self.manifest['seed']}"


def folds_dir(exp_dir: Path) -> Path:
    return exp_dir / "folds"


def load_plan(exp_dir: Path) -> FoldPlan:
    """Load ``<exp>/folds/``, checking every file against the manifest and the manifest's shapes."""
    out = folds_dir(exp_dir)
    manifest = read_manifest(out / "manifest.json", fmt=FORMAT, rerun=RERUN)
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing:
        raise KitError(f"{out / 'manifest.json'} lacks {', '.join(missing)}; re-run '{RERUN}'")
    plan = np.asarray(load_npy(out / "plan.npy", mmap=False, rerun=RERUN))
    y = np.asarray(load_npy(out / "y.npy", mmap=False, rerun=RERUN))
    if not (out / "ids.json").exists():
        raise KitError(f"{out / 'ids.json'} does not exist; re-run '{RERUN}'")
    ids = read_json(out / "ids.json")
    if (sha256_array(plan) != manifest["plan_sha256"] or sha256_array(y) != manifest["y_sha256"]
            or sha256_json(ids) != manifest["ids_sha256"]):
        raise KitError(f"the files in {out} do not match its manifest (an interrupted write?); re-run '{RERUN}'")
    # The hashes only prove the files are the ones the manifest was written with; these prove they fit it.
    problems = _shape_problems(manifest, plan, y, ids)
    if problems:
        raise KitError(f"{out}: {'; '.join(problems)}; re-run '{RERUN}'")
    return FoldPlan(plan=plan, y=y.astype(np.int8), train_ids=tuple(map(str, ids["train_ids"])),
                    test_ids=tuple(map(str, ids["test_ids"])), manifest=manifest)


def _shape_problems(manifest: dict[str, Any], plan: np.ndarray, y: np.ndarray, ids: Any) -> list[str]:
    """What in the plan, labels and ids disagrees with the manifest's n_folds, repeats, n_train and n_test."""
    n_train, n_test = manifest["n_train"], manifest["n_test"]
    repeats, n_folds = manifest["repeats"], manifest["n_folds"]
    problems = []
    if plan.shape != (repeats, n_train) or plan.dtype.kind not in "iu":
        problems.append(f"plan.npy is {plan.dtype} {plan.shape}, expected integers ({repeats}, {n_train})")
    elif plan.size and (plan.min() < -1 or plan.max() >= n_folds):
        problems.append(f"plan.npy holds folds outside 0..{n_folds - 1} (and -1 for rows left out)")
    if y.shape != (n_train,) or not np.isin(y, (0, 1)).all():
        problems.append(f"y.npy is {y.shape}, expected ({n_train},) of 0/1 labels")
    if (not isinstance(ids, dict) or len(ids.get("train_ids", ())) != n_train
            or len(ids.get("test_ids", ())) != n_test):
        problems.append(f"ids.json does not hold {n_train} train_ids and {n_test} test_ids")
    return problems


def ensure_plan(exp_dir: Path, *, y: np.ndarray, train_ids: Sequence[str], test_ids: Sequence[str],
                n_folds: int | None, repeats: int | None, seed: int | None) -> tuple[FoldPlan, str]:
    """The experiment's plan for these data and settings, made and written if needed.

    Returns the plan and what happened to it: 'kept', 'new' (there was none) or 'replaced'. A setting
    given as None keeps the existing plan's value (or the default: 5 folds, 1 repeat, seed 0). The existing
    plan is kept when its settings, labels and ids all match; otherwise a new one replaces it, and every cv
    result made on the old one becomes stale.
    """
    y = np.asarray(y, dtype=np.int8)
    current = None
    if (folds_dir(exp_dir) / "manifest.json").exists():
        try:
            current = load_plan(exp_dir)
        except KitError:
            current = None  # damaged: replaced below
    old = current.manifest if current else {}
    wanted = {
        "n_folds": n_folds if n_folds is not None else old.get("n_folds", 5),
        "repeats": repeats if repeats is not None else old.get("repeats", 1),
        "seed": seed if seed is not None else old.get("seed", 0),
        "y_sha256": sha256_array(y),
        "ids_sha256": ids_sha256(train_ids, test_ids),
    }
    if current is not None and all(old.get(key) == value for key, value in wanted.items()):
        return current, "kept"
    plan = make_plan(y, n_folds=wanted["n_folds"], repeats=wanted["repeats"], seed=wanted["seed"])
    out = folds_dir(exp_dir)
    # subtle: the old manifest goes first, so a crash while the arrays are replaced never pairs it with them.
    (out / "manifest.json").unlink(missing_ok=True)
    save_npy_atomic(out / "plan.npy", plan)
    save_npy_atomic(out / "y.npy", y)
    ids = {"train_ids": list(train_ids), "test_ids": list(test_ids)}
    write_json_atomic(out / "ids.json", ids)
    manifest = new_manifest(FORMAT, **wanted, n_train=len(y), n_test=len(test_ids), plan_sha256=sha256_array(plan))
    write_json_atomic(out / "manifest.json", manifest)
    return FoldPlan(plan=plan, y=y, train_ids=tuple(ids["train_ids"]), test_ids=tuple(ids["test_ids"]),
                    manifest=manifest), "replaced" if current is not None else "new"
