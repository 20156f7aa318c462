"""Stage 2: k-fold heads on the cached features; out-of-fold and test predictions for every model.

A model is a feature set and a head: ``<feature set>__<head>`` (``squeezenet__logreg``,
``efficientnet_lite0__mlp``), or ``concat__<head>`` on the features of several backbones side by side (the
classic recipe's structure). Every model uses the experiment's one fold plan (:mod:`kaggle_kit.folds`).

:func:`run_cv` (``kaggle-kit cv``) writes, for each model, through :mod:`kaggle_kit.store` (which owns the files):

- out-of-fold predictions float32 (repeats, n_train): P(positive), each row filled exactly once per repeat;
  rows of unreadable training images are left out of fitting and scoring and hold NaN;
- test predictions float32 (n_test,): P(positive), the mean over every fold model of every repeat, in
  probability space (see :mod:`kaggle_kit.heads`); unreadable test images get the training prior;
- the model, its head, feature sets and their keys, the plan's hash, the resolved parameters, the flip-TTA
  choices, the scores and the seconds taken.

A model whose feature keys, plan and settings are unchanged is not recomputed ("cached"). A result made on
another plan is stale: the store's loader refuses it and names the command that recomputes it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kaggle_kit.artifacts import KitError, experiment_lock, sha256_json
from kaggle_kit.data import Dataset
from kaggle_kit.folds import NO_GROUPS, ensure_plan, groups_regex
from kaggle_kit.heads import HEADS as PLAIN_HEADS
from kaggle_kit.metrics import METRICS, NAMES, crossfit_score, score
from kaggle_kit.pseudo import HEADS as PSEUDO_HEADS
from kaggle_kit.store import (
    CONCAT_MODEL,
    CV_FORMAT,
    CvResult,
    FeatureSet,
    FoldPlan,
    cached_cv_result,
    concat_head_option,
    cv_command,
    cv_root,
    experiment_data,
    experiment_metric,
    feature_set_names,
    features_dir,
    features_root,
    load_features,
    model_name,
    oof_key,
    pseudo_twin,
    stale_cv_models,
    write_cv_result,
)
from kaggle_kit.views import array_name

# Every head a model may use: the plain ones and their pseudo-labelling twins ('logreg_pl', 'mlp_pl').
HEADS = {**PLAIN_HEADS, **PSEUDO_HEADS}

# --head choices: a head on each feature set, or a head on all of them side by side (the concat model).
CONCAT_HEADS = {concat_head_option(h): h for h in ("logreg", "mlp")}  # {'concat': 'logreg', 'concat_mlp': 'mlp'}
HEAD_CHOICES = ("logreg", "mlp", *CONCAT_HEADS)
# Flip TTA, where every feature set of a model has flipped features: fit on both views and predict their
# mean. Measured on the mini competition (1,600 training photos; squeezenet, efficientnet_lite0 and concat,
# logreg and mlp heads, 5 folds), mean OOF log loss of the six models: neither 0.0585, mean of both views
# only 0.0547, training on both only 0.0557, both 0.0533 (best for four of the six models).
TTA_TRAIN = True
TTA_PREDICT = True


# ------------------------------------------------------------------------------------------------ the core
def score_oof(y: np.ndarray, oof: np.ndarray, plan: np.ndarray, usable: np.ndarray) -> dict[str, Any]:
    """Scores of out-of-fold predictions ``oof`` (repeats, n) against labels ``y`` (n,), in every metric.

    ``plan`` (repeats, n) gives each row's fold and ``usable`` (n,) the rows that count. For each metric of
    :data:`kaggle_kit.metrics.METRICS`: ``oof_<metric>`` the cross-fitted score of the usable rows
    (:func:`kaggle_kit.metrics.crossfit_score`: for AUC the mean of the folds' AUCs; the mean over repeats) and
    ``fold_<metric>`` one score per fold, repeat by repeat. Log losses are Kaggle's (clipped at 1e-15);
    accuracy thresholds at 0.5; AUC is scikit-learn's (None where a fold holds one class only).
    """
    rows = np.flatnonzero(usable)
    k = int(plan.max()) + 1
    out: dict[str, Any] = {}
    for metric in METRICS:
        folds = []
        for r in range(len(oof)):
            for f in range(k):
                held = rows[plan[r, rows] == f]
                folds.append(_rounded(score(metric, y[held], oof[r, held])))
        out[oof_key(metric)] = _rounded(np.mean([crossfit_score(metric, y[rows], o[rows], p[rows])
                                                 for o, p in zip(oof, plan)]))
        out[f"fold_{metric}"] = folds
    return out


def _rounded(value: float) -> float | None:
    """A score for JSON: 6 decimals, None when it is undefined (NaN)."""
    return round(float(value), 6) if np.isfinite(value) else None


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

    def command(self, exp_dir: Path) -> str:
        """The command that recomputes this model."""
        return cv_command(exp_dir, model=self.name, head=self.head, features=self.features)


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
        specs += [ModelSpec(model_name(name, h), h, (name,)) for h in dict.fromkeys(heads) if h not in CONCAT_HEADS]
    for h in dict.fromkeys(heads):
        if h in CONCAT_HEADS:
            if len(feature_sets) < 2:
                raise KitError(
                    f"--head {h} joins the features of several backbones, but only {list(feature_sets)} is "
                    "selected; extract another with 'kaggle-kit features --backbone NAME'", code=2)
            specs.append(ModelSpec(model_name(CONCAT_MODEL, CONCAT_HEADS[h]), CONCAT_HEADS[h], tuple(feature_sets)))
    if pseudo:
        specs += [ModelSpec(pseudo_twin(s.name), pseudo_twin(s.head), s.features) for s in specs]
    return specs


def shared_views(members: Sequence[FeatureSet]) -> list[str]:
    """The views every feature set of a model has, as array suffixes in cv's order ('', 'flip', 'zoom', ...): the
    longest common start of their lists, so that view i of one set is view i of the others."""
    common: list[str] = []
    for suffixes in zip(*(fs.view_suffixes for fs in members)):
        if len(set(suffixes)) != 1:
            break
        common.append(suffixes[0])
    return common


def _views(members: Sequence[FeatureSet], suffixes: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training and test views (n, d)/(m, d) of a model's feature sets, side by side when there are several: one
    per suffix of ``suffixes`` (see :func:`shared_views`)."""
    train = [_side_by_side([fs.arrays[array_name("train", v)] for fs in members]) for v in suffixes]
    test = [_side_by_side([fs.arrays[array_name("test", v)] for fs in members]) for v in suffixes]
    return train, test


def _side_by_side(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)


# --------------------------------------------------------------------------------------------------- edge
def _model_key(spec: ModelSpec, feature_keys: dict[str, str], plan: FoldPlan, settings: Any, *,
               tta_train: bool, tta_predict: bool) -> str:
    return sha256_json({
        "format": CV_FORMAT, "model": spec.name, "head": spec.head, "features": feature_keys,
        "plan_sha256": plan.sha256, "seed": plan.seed, "settings": dataclasses.asdict(settings),
        "tta_train": tta_train, "tta_predict": tta_predict,
    })


def run_model(exp_dir: Path, spec: ModelSpec, sets: dict[str, FeatureSet], plan: FoldPlan, dataset: Dataset, *,
              settings: Any = None, tta_train: bool | None = None, tta_predict: bool | None = None,
              force: bool = False, on_fold: Callable[[int], None] = lambda n: None) -> CvResult:
    """Cross-validate one model on loaded feature sets ``sets`` (name -> FeatureSet) and write its result.

    ``dataset`` gives the rows' files (to find those of unreadable images); ``settings`` the head's settings
    (default: its defaults); ``tta_train``/``tta_predict`` None: the defaults, where the features have several
    views (flip, ``--views``): then the head trains on all of them and predicts their mean.
    """
    settings = HEADS[spec.head][1]() if settings is None else settings
    members = [sets[name] for name in spec.features]
    suffixes = shared_views(members)
    several = len(suffixes) > 1
    tta_train = several and (TTA_TRAIN if tta_train is None else tta_train)
    tta_predict = several and (TTA_PREDICT if tta_predict is None else tta_predict)
    feature_keys = {fs.name: fs.key for fs in members}
    key = _model_key(spec, feature_keys, plan, settings, tta_train=tta_train, tta_predict=tta_predict)
    if not force and (result := cached_cv_result(exp_dir, spec.name, key=key, plan=plan)) is not None:
        return result

    t0 = time.perf_counter()
    unreadable = {split: frozenset().union(*(fs.unreadable(split) for fs in members)) for split in ("train", "test")}
    usable = np.array([f not in unreadable["train"] for f in dataset.train_files])
    test_usable = np.array([f not in unreadable["test"] for f in dataset.test_files])
    train_views, test_views = _views(members, suffixes if tta_train or tta_predict else suffixes[:1])
    try:
        result = cross_validate(train_views, plan.y, plan.plan, test_views, head=spec.head, settings=settings,
                                usable=usable, tta_train=tta_train, tta_predict=tta_predict,
                                seed=plan.seed, on_fold=on_fold, test_usable=test_usable)
    except ValueError as exc:  # the heads refuse data they cannot fit (one class left, too few rows per fold)
        raise KitError(f"cannot fit {spec.name}: {exc}; add training images or use fewer --folds", code=2) from None
    test = result.test.copy()
    test[[f in unreadable["test"] for f in dataset.test_files]] = float(plan.y[usable].mean())
    return write_cv_result(
        exp_dir, spec.name, plan=plan, oof=result.oof, test=test, head=spec.head, features=spec.features,
        feature_keys=feature_keys, key=key, params=result.params, tta_train=tta_train, tta_predict=tta_predict,
        scores=result.scores, seconds=round(time.perf_counter() - t0, 2), n_excluded_train=int((~usable).sum()),
        n_excluded_test=len(unreadable["test"]),
    )


@dataclass(frozen=True)
class CvRun:
    """What ``run_cv`` did: the plan and what became of it ('kept', 'new' or 'replaced'), each model's result,
    the models left stale on disk (made on another plan and not recomputed by this run), and the experiment's
    metric (the table's first score column)."""

    exp_dir: Path
    plan: FoldPlan
    plan_status: str
    results: list[CvResult]
    stale: list[str]
    metric: str = "logloss"

    def lines(self) -> list[str]:
        """What ``kaggle-kit cv`` prints: the plan, a table of the models' OOF scores in every metric (the
        experiment's first; '-' where undefined), and the cv folder last."""
        status = {"kept": "", "new": " (new)",
                  "replaced": " (new: cv results made on the previous plan are stale)"}[self.plan_status]
        columns = [self.metric] + [m for m in METRICS if m != self.metric]
        column = max([32, *(len(r.model) + 2 for r in self.results)])  # layer feature sets have long names
        out = [f"fold plan: {self.plan.describe()}{status}",
               f"{'model':<{column}}" + "".join(f"{'OOF ' + NAMES[m]:>14}" for m in columns) + f"{'seconds':>10}"]
        for r in self.results:
            took = "cached" if r.cached else f"{r.seconds:.1f}"
            cells = "".join(f"{'-' if r.score(m) is None else format(r.score(m), '.5f'):>14}" for m in columns)
            out.append(f"{r.model:<{column}}{cells}{took:>10}")
        if any(r.cached for r in self.results):
            out.append("cached: inputs unchanged since the last run; --force recomputes")
        return [*out, str(cv_root(self.exp_dir))]

    def warnings(self) -> list[str]:
        """Lines for stderr: the stale models blend will refuse."""
        if not self.stale:
            return []
        return [f"warning: made on another fold plan, so 'kaggle-kit blend' refuses them: {', '.join(self.stale)}; "
                "re-run 'kaggle-kit cv' to recompute them"]


def run_cv(
    exp_dir: Path,
    *,
    data_dir: Path | None = None,
    positive: str | None = None,
    n_folds: int | None = None,
    repeats: int | None = None,
    seed: int | None = None,
    groups: str | None = None,
    feature_sets: Sequence[str] | None = None,
    heads: Sequence[str] | None = None,
    pseudo: bool = False,
    force: bool = False,
    progress: bool = True,
) -> CvRun:
    """``kaggle-kit cv``: cross-validate the models of ``feature_sets`` (default: every cached one) x ``heads``
    (see :func:`model_specs`; ``pseudo`` adds the pseudo-labelling twins) on the experiment's fold plan, made
    or replaced as asked (see :func:`kaggle_kit.folds.ensure_plan`); write each model's result unless it is
    cached. ``groups``: a ``--groups`` pattern for a group-wise plan (see :mod:`kaggle_kit.folds`; None keeps the
    plan's, '' or 'none' asks for a plan by row).

    ``data_dir``/``positive`` default to the experiment's, and the folder is read as the experiment remembers
    (its layout, labels file and columns: :func:`kaggle_kit.store.experiment_data`). Every model is scored in
    every metric; the table shows the experiment's first. Holds the experiment's lock.
    """
    from tqdm import tqdm

    from kaggle_kit.data import discover_remembered

    available = feature_set_names(exp_dir)  # refuses before the lock creates anything
    chosen = list(dict.fromkeys(feature_sets)) if feature_sets else available
    for name in chosen:
        if name not in available:
            raise KitError(f"no cached feature set {name!r} in {features_root(exp_dir)} (cached: "
                           f"{', '.join(available)}); run 'kaggle-kit features --backbone {name}' first", code=2)
    specs = model_specs(chosen, heads, pseudo=pseudo)
    if groups not in (None, *NO_GROUPS):
        groups_regex(groups)  # a bad pattern is refused before the lock
    settings = experiment_data(exp_dir, data=data_dir, positive=positive)
    metric = experiment_metric(exp_dir)
    with experiment_lock(exp_dir, command="cv"):
        dataset = discover_remembered(settings)
        image_list_hash = dataset.image_list_hash()
        sets = {name: load_features(features_dir(exp_dir, name), image_list_hash=image_list_hash) for name in chosen}
        plan, plan_status = ensure_plan(exp_dir, y=dataset.y, train_ids=dataset.train_ids,
                                        test_ids=dataset.test_ids, n_folds=n_folds, repeats=repeats, seed=seed,
                                        groups=groups, train_files=dataset.train_files)
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
        stale = [m for m in stale_cv_models(exp_dir, plan) if m not in done]
    return CvRun(exp_dir=exp_dir, plan=plan, plan_status=plan_status, results=results, stale=stale, metric=metric)
