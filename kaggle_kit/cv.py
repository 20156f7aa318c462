"""Stage 2: k-fold heads on the cached features; out-of-fold and test predictions for every model.

A model is a feature set and a head: ``<feature set>__<head>`` (``squeezenet__logreg``,
``efficientnet_lite0__mlp``), or ``concat__<head>`` on the features of several backbones side by side (the
classic recipe's structure). Every model uses the experiment's one fold plan (:mod:`kaggle_kit.folds`).

Output, in ``experiments/<exp>/cv/<model>/``:

- ``oof.npy`` float32 (repeats, n_train): out-of-fold P(positive), each row filled exactly once per repeat;
  rows of unreadable training images are left out of fitting and scoring and hold NaN;
- ``test.npy`` float32 (n_test,): test P(positive), the mean over every fold model of every repeat, in
  probability space (see :mod:`kaggle_kit.heads`); unreadable test images get the training prior;
- ``manifest.json`` (format ``kaggle-kit/cv/1``), written last: the model, its head, feature sets and their
  keys, the plan's hash, the resolved parameters, the flip-TTA choices, the scores and the seconds taken.

A model whose feature keys, plan and settings are unchanged is not recomputed ("cached"). A result made on
another plan is stale: :func:`load_cv_result` refuses it and names the command that recomputes it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kaggle_kit.artifacts import (
    KitError,
    check_name,
    features_dir,
    load_npy,
    new_manifest,
    read_manifest,
    save_npy_atomic,
    sha256_json,
    write_json_atomic,
)
from kaggle_kit.data import Dataset
from kaggle_kit.features import FeatureSet, load_features
from kaggle_kit.folds import FoldPlan, ensure_plan, folds_dir, load_plan
from kaggle_kit.heads import HEADS as PLAIN_HEADS
from kaggle_kit.metrics import log_loss
from kaggle_kit.pseudo import HEADS as PSEUDO_HEADS
from kaggle_kit.pseudo import SUFFIX as PSEUDO_SUFFIX

# Every head a model may use: the plain ones and their pseudo-labelling twins ('logreg_pl', 'mlp_pl').
HEADS = {**PLAIN_HEADS, **PSEUDO_HEADS}

FORMAT = "kaggle-kit/cv/1"
CONCAT = "concat"
# --head choices: a head on each feature set, or the concat model with a head.
HEAD_CHOICES = ("logreg", "mlp", "concat", "concat_mlp")
CONCAT_HEADS = {"concat": "logreg", "concat_mlp": "mlp"}
# Flip TTA, where every feature set of a model has flipped features: fit on both views and predict their
# mean. Measured on the mini competition (1,600 training photos; squeezenet, efficientnet_lite0 and concat,
# logreg and mlp heads, 5 folds), mean OOF log loss of the six models: neither 0.0585, mean of both views
# only 0.0547, training on both only 0.0557, both 0.0533 (best for four of the six models).
TTA_TRAIN = True
TTA_PREDICT = True


# ------------------------------------------------------------------------------------------------ the core
def score_oof(y: np.ndarray, oof: np.ndarray, plan: np.ndarray, usable: np.ndarray) -> dict[str, Any]:
    """Scores of out-of-fold predictions ``oof`` (repeats, n) against labels ``y`` (n,).

    ``plan`` (repeats, n) gives each row's fold and ``usable`` (n,) the rows that count. Log losses are
    Kaggle's (clipped at 1e-15); accuracy thresholds at 0.5. Per-fold lists run repeat by repeat.
    """
    rows = np.flatnonzero(usable)
    k = int(plan.max()) + 1
    fold_logloss, fold_accuracy = [], []
    for r in range(len(oof)):
        for f in range(k):
            held = rows[plan[r, rows] == f]
            fold_logloss.append(round(log_loss(y[held], oof[r, held]), 6))
            fold_accuracy.append(round(float(np.mean((oof[r, held] > 0.5) == y[held])), 6))
    return {
        "oof_logloss": round(float(np.mean([log_loss(y[rows], o[rows]) for o in oof])), 6),
        "oof_accuracy": round(float(np.mean([np.mean((o[rows] > 0.5) == y[rows]) for o in oof])), 6),
        "fold_logloss": fold_logloss,
        "fold_accuracy": fold_accuracy,
    }


@dataclass(frozen=True)
class CvOutput:
    """``oof`` float32 (repeats, n); ``test`` float32 (m,); ``params`` the resolved head parameters."""

    oof: np.ndarray
    test: np.ndarray
    params: dict[str, Any]
    scores: dict[str, Any]


def cross_validate(
    views: Sequence[np.ndarray],
    y: np.ndarray,
    plan: np.ndarray,
    test_views: Sequence[np.ndarray],
    *,
    head: str,
    settings: Any = None,
    usable: np.ndarray | None = None,
    tta_train: bool = False,
    tta_predict: bool = False,
    seed: int,
    on_fold: Callable[[int], None] = lambda n: None,
    test_usable: np.ndarray | None = None,
) -> CvOutput:
    """Fit ``head`` on every fold of every repeat of ``plan`` (repeats, n); out-of-fold and test predictions.

    ``views``/``test_views``: (n, d)/(m, d) float32 per view (see :mod:`kaggle_kit.heads`); ``y`` (n,) 0/1;
    ``usable`` (n,) bool, False for rows to leave out (NaN in ``oof``); ``test_usable`` (m,) bool, False for
    test rows a pseudo-labelling head must not train on; ``settings``: the head's settings dataclass
    (default: its defaults). Repeat r uses seed ``seed + r``.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    fit, settings_type = HEADS[head]
    settings = settings_type() if settings is None else settings
    y = np.asarray(y)
    usable = np.ones(len(y), dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    if plan.ndim != 2 or plan.shape[1] != len(y):
        raise ValueError(f"plan must be (repeats, {len(y)}), got {plan.shape}")
    oof = np.empty(plan.shape, dtype=np.float32)
    tests, fitted = [], []
    uses_test = {"test_usable": test_usable} if head in PSEUDO_HEADS else {}  # heads that train on test rows
    for r in range(len(plan)):
        fold = np.where(usable, plan[r], -1)
        out = fit(views, y, fold, test_views, settings=settings, tta_train=tta_train, tta_predict=tta_predict,
                  seed=seed + r, on_fold=on_fold, **uses_test)
        oof[r] = out.oof
        tests.append(out.test)
        fitted.append(out.params)
    params = {"settings": dataclasses.asdict(settings), "seed": seed, "per_repeat": fitted}
    test = np.mean(tests, axis=0).astype(np.float32)  # every fold model weighs the same: probability mean
    return CvOutput(oof=oof, test=test, params=params, scores=score_oof(y, oof, plan, usable))


# ------------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """A model to cross-validate: ``name`` (its folder), ``head`` (a key of :data:`HEADS`), its feature sets."""

    name: str
    head: str
    features: tuple[str, ...]


def model_specs(feature_sets: Sequence[str], heads: Sequence[str] | None = None, *,
                pseudo: bool = False) -> list[ModelSpec]:
    """The models for these feature sets and ``--head`` choices (default: logreg and mlp on each feature set,
    plus concat__logreg when there are two or more); with ``pseudo`` each also gets its pseudo-labelling
    twin, named and headed with the suffix '_pl' (``efficientnet_lite0__logreg_pl``)."""
    if heads is None:
        heads = ["logreg", "mlp"] + (["concat"] if len(feature_sets) >= 2 else [])
    unknown = [h for h in heads if h not in HEAD_CHOICES]
    if unknown:
        raise KitError(f"unknown head {unknown[0]!r}; choose one of: {', '.join(HEAD_CHOICES)}", code=2)
    specs = []
    for name in feature_sets:
        specs += [ModelSpec(f"{name}__{h}", h, (name,)) for h in dict.fromkeys(heads) if h not in CONCAT_HEADS]
    for h in dict.fromkeys(heads):
        if h in CONCAT_HEADS:
            if len(feature_sets) < 2:
                raise KitError(
                    f"--head {h} joins the features of several backbones, but only {list(feature_sets)} is "
                    "selected; extract another with 'kaggle-kit features --backbone NAME'", code=2)
            specs.append(ModelSpec(f"{CONCAT}__{CONCAT_HEADS[h]}", CONCAT_HEADS[h], tuple(feature_sets)))
    if pseudo:
        specs += [ModelSpec(s.name + PSEUDO_SUFFIX, s.head + PSEUDO_SUFFIX, s.features) for s in specs]
    return specs


def rerun_command(exp_dir: Path, spec: ModelSpec) -> str:
    """The command that recomputes one model."""
    exp = "" if exp_dir.name == "default" else f" --exp {exp_dir.name}"
    plain = spec.head.removesuffix(PSEUDO_SUFFIX)
    pseudo = " --pseudo" if plain != spec.head else ""
    if spec.name.startswith(f"{CONCAT}__"):
        head = next(h for h, inner in CONCAT_HEADS.items() if inner == plain)
    else:
        head = plain
    backbones = "".join(f" --backbone {f}" for f in spec.features)
    return f"kaggle-kit cv{exp}{backbones} --head {head}{pseudo}"


def _views(members: Sequence[FeatureSet], *, flip: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training and test views (n, d)/(m, d) of a model's feature sets, side by side when there are several;
    with ``flip`` the flipped view too."""
    train = [_side_by_side([fs.arrays[k] for fs in members]) for k in ("train", "train_flip")[:1 + flip]]
    test = [_side_by_side([fs.arrays[k] for fs in members]) for k in ("test", "test_flip")[:1 + flip]]
    return train, test


def _side_by_side(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)


# --------------------------------------------------------------------------------------------------- edge
def cv_dir(exp_dir: Path, model: str) -> Path:
    return exp_dir / "cv" / check_name("model", model)


def cached_feature_sets(exp_dir: Path) -> list[str]:
    """Names of the experiment's finished feature sets (folders with a manifest.json), sorted; at least one."""
    root = exp_dir / "features"
    names = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []
    if not names:
        raise KitError(f"no cached features in {root}; run 'kaggle-kit features --backbone ...' first")
    return names


@dataclass(frozen=True)
class CvResult:
    """A finished model: ``oof`` float32 (repeats, n_train), ``test`` float32 (n_test,), its manifest."""

    model: str
    manifest: dict[str, Any]
    oof: np.ndarray
    test: np.ndarray
    cached: bool = False


def _check_arrays(out: Path, oof: np.ndarray, test: np.ndarray, plan: FoldPlan, rerun: str) -> None:
    shape = (plan.repeats, len(plan.train_ids))
    if oof.shape != shape or oof.dtype != np.float32:
        raise KitError(f"{out / 'oof.npy'} is {oof.dtype} {oof.shape}, but the experiment has {shape[0]} repeat(s) "
                       f"of {shape[1]} training images (float32); re-run '{rerun}'")
    if test.shape != (len(plan.test_ids),) or test.dtype != np.float32:
        raise KitError(f"{out / 'test.npy'} is {test.dtype} {test.shape}, but the experiment has "
                       f"{len(plan.test_ids)} test images (float32); re-run '{rerun}'")


def load_cv_result(exp_dir: Path, model: str, *, plan: FoldPlan | None = None) -> CvResult:
    """Load ``<exp>/cv/<model>/``, refusing a result made on another fold plan than the current one."""
    plan = load_plan(exp_dir) if plan is None else plan
    out = cv_dir(exp_dir, model)
    manifest = read_manifest(out / "manifest.json", fmt=FORMAT, rerun="kaggle-kit cv")
    rerun = rerun_command(exp_dir, ModelSpec(model, manifest["head"], tuple(manifest["features"])))
    if manifest.get("plan_sha256") != plan.sha256:
        raise KitError(f"{out} was made on another fold plan than the current one in {folds_dir(exp_dir)} "
                       f"({plan.describe()}); re-run '{rerun}'")
    oof, test = load_npy(out / "oof.npy"), load_npy(out / "test.npy")
    _check_arrays(out, oof, test, plan, rerun)
    return CvResult(model=model, manifest=manifest, oof=oof, test=test)


def load_cv_results(exp_dir: Path, models: Sequence[str] | None = None) -> dict[str, CvResult]:
    """Every finished model of the experiment (or the named ones), all checked against the current plan."""
    plan = load_plan(exp_dir)
    if models is None:
        root = exp_dir / "cv"
        models = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []
        if not models:
            raise KitError(f"no cv results in {root}; run 'kaggle-kit cv' first")
    return {m: load_cv_result(exp_dir, m, plan=plan) for m in models}


def _model_key(spec: ModelSpec, feature_keys: dict[str, str], plan: FoldPlan, settings: Any, *,
               tta_train: bool, tta_predict: bool) -> str:
    return sha256_json({
        "format": FORMAT, "model": spec.name, "head": spec.head, "features": feature_keys,
        "plan_sha256": plan.sha256, "seed": plan.manifest["seed"], "settings": dataclasses.asdict(settings),
        "tta_train": tta_train, "tta_predict": tta_predict,
    })


def _cached(out: Path, key: str, plan: FoldPlan) -> CvResult | None:
    """The finished result in ``out`` if it was made with this key and its arrays are whole, else None."""
    try:
        manifest = read_manifest(out / "manifest.json", fmt=FORMAT, rerun="kaggle-kit cv")
        if manifest.get("key") != key:
            return None
        oof, test = load_npy(out / "oof.npy"), load_npy(out / "test.npy")
        _check_arrays(out, oof, test, plan, "kaggle-kit cv")
    except KitError:
        return None
    return CvResult(model=out.name, manifest=manifest, oof=oof, test=test, cached=True)


def run_model(exp_dir: Path, spec: ModelSpec, sets: dict, plan: FoldPlan, dataset: Dataset, *,
              settings: Any = None, tta_train: bool | None = None, tta_predict: bool | None = None,
              force: bool = False, on_fold: Callable[[int], None] = lambda n: None) -> CvResult:
    """Cross-validate one model on loaded feature sets ``sets`` (name -> FeatureSet) and write its result.

    ``dataset`` gives the rows' files (to find those of unreadable images); ``settings`` the head's settings
    (default: its defaults); ``tta_train``/``tta_predict`` None: the defaults, where the features are flipped.
    """
    settings = HEADS[spec.head][1]() if settings is None else settings
    members = [sets[name] for name in spec.features]
    flip = all("train_flip" in fs.arrays for fs in members)
    tta_train = flip and (TTA_TRAIN if tta_train is None else tta_train)
    tta_predict = flip and (TTA_PREDICT if tta_predict is None else tta_predict)
    feature_keys = {fs.name: fs.manifest["key"] for fs in members}
    key = _model_key(spec, feature_keys, plan, settings, tta_train=tta_train, tta_predict=tta_predict)
    out = cv_dir(exp_dir, spec.name)
    if not force and (result := _cached(out, key, plan)) is not None:
        return result

    t0 = time.perf_counter()
    unreadable = {split: {f for fs in members for f in fs.manifest["unreadable"][split]} for split in ("train", "test")}
    usable = np.array([f not in unreadable["train"] for f in dataset.train_files])
    test_usable = np.array([f not in unreadable["test"] for f in dataset.test_files])
    train_views, test_views = _views(members, flip=tta_train or tta_predict)
    try:
        result = cross_validate(train_views, plan.y, plan.plan, test_views, head=spec.head, settings=settings,
                                usable=usable, tta_train=tta_train, tta_predict=tta_predict,
                                seed=plan.manifest["seed"], on_fold=on_fold, test_usable=test_usable)
    except ValueError as exc:  # the heads refuse data they cannot fit (one class left, too few rows per fold)
        raise KitError(f"cannot fit {spec.name}: {exc}; add training images or use fewer --folds", code=2) from None
    test = result.test.copy()
    test[[f in unreadable["test"] for f in dataset.test_files]] = float(plan.y[usable].mean())
    seconds = round(time.perf_counter() - t0, 2)

    # subtle: the old manifest goes first, so a crash while the arrays are replaced never pairs it with them.
    (out / "manifest.json").unlink(missing_ok=True)
    save_npy_atomic(out / "oof.npy", result.oof)
    save_npy_atomic(out / "test.npy", test)
    manifest = new_manifest(
        FORMAT,
        model=spec.name,
        head=spec.head,
        features=list(spec.features),
        feature_keys=feature_keys,
        plan_sha256=plan.sha256,
        key=key,
        params=result.params,
        tta_train=tta_train,
        tta_predict=tta_predict,
        test_average="probability",
        scores=result.scores,
        seconds=seconds,
        n_excluded_train=int((~usable).sum()),
        n_excluded_test=len(unreadable["test"]),
        n_train=len(plan.train_ids),
        n_test=len(plan.test_ids),
    )
    write_json_atomic(out / "manifest.json", manifest)
    return CvResult(model=spec.name, manifest=manifest, oof=result.oof, test=test)


@dataclass(frozen=True)
class CvRun:
    """What ``run_cv`` did: the plan and what became of it ('kept', 'new' or 'replaced'), each model's result,
    and the models left stale on disk (made on another plan and not recomputed by this run)."""

    plan: FoldPlan
    plan_status: str
    results: list[CvResult]
    stale: list[str]


def run_cv(
    exp_dir: Path,
    *,
    data_dir: Path,
    positive: str,
    n_folds: int | None = None,
    repeats: int | None = None,
    seed: int | None = None,
    feature_sets: Sequence[str] | None = None,
    heads: Sequence[str] | None = None,
    pseudo: bool = False,
    force: bool = False,
    progress: bool = True,
) -> CvRun:
    """Cross-validate the models of ``feature_sets`` (default: every cached one) x ``heads`` (see
    :func:`model_specs`; ``pseudo`` adds the pseudo-labelling twins) on the experiment's fold plan, made or
    replaced as asked (see :func:`kaggle_kit.folds.ensure_plan`); write each model's result unless it is
    cached."""
    from tqdm import tqdm

    from kaggle_kit.data import discover

    available = cached_feature_sets(exp_dir)
    chosen = list(dict.fromkeys(feature_sets)) if feature_sets else available
    for name in chosen:
        if name not in available:
            raise KitError(f"no cached feature set {name!r} in {exp_dir / 'features'} (cached: "
                           f"{', '.join(available)}); run 'kaggle-kit features --backbone {name}' first", code=2)
    specs = model_specs(chosen, heads, pseudo=pseudo)
    dataset = discover(data_dir, positive=positive)
    image_list_hash = dataset.image_list_hash()
    sets = {name: load_features(features_dir(exp_dir, name), image_list_hash=image_list_hash) for name in chosen}
    plan, plan_status = ensure_plan(exp_dir, y=dataset.y, train_ids=dataset.train_ids,
                                    test_ids=dataset.test_ids, n_folds=n_folds, repeats=repeats, seed=seed)
    per_model = plan.repeats * plan.n_folds
    results = []
    with tqdm(total=len(specs) * per_model, unit="fold", disable=not progress) as bar:
        for spec in specs:
            bar.set_description(spec.name)
            result = run_model(exp_dir, spec, sets, plan, dataset, force=force, on_fold=bar.update)
            if result.cached:
                bar.update(per_model)
            results.append(result)
    done = {r.model for r in results}
    stale = []
    for path in sorted((exp_dir / "cv").glob("*/manifest.json")):
        if path.parent.name in done:
            continue
        try:
            manifest = read_manifest(path, fmt=FORMAT, rerun="kaggle-kit cv")
        except KitError:
            continue
        if manifest.get("plan_sha256") != plan.sha256:
            stale.append(path.parent.name)
    return CvRun(plan=plan, plan_status=plan_status, results=results, stale=stale)
