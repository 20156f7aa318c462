"""Fold-safe pseudo-labelling: a head refitted on the test rows it is sure of. Pure functions over numpy arrays.

Kaggle test sets are large and unlabelled (Redux: 12,500 test photos beside 25,000 training ones). Inside
each outer fold f of the plan:

1. the head is fitted on fold f's training rows and predicts the test rows (its own model only, not the
   fold average: the other folds' models have seen fold f's held-out rows);
2. the test rows that model is sure of (max(p, 1 - p) >= ``threshold``) become extra training rows with
   target 1[p > 0.5] (``labels='hard'``) or p (``'soft'``) and weight ``weight`` (1: as much as a labelled row);
3. the head is refitted on fold f's training rows plus those rows, and predicts the held-out rows of fold f
   and the test rows. Test predictions are the mean over the fold models, as for every head.

So a held-out row never influences its own prediction: neither its label nor its features reach the model
that predicts it, in step 1 or in step 3. (The heads fit every fold at once; step 1 and step 3 are each one
call of the head, with per-fold extra rows: :class:`kaggle_kit.heads.ExtraRows`.)

The result is a head of the usual shape (:mod:`kaggle_kit.heads`) registered as ``<head>_pl`` in
:data:`HEADS`: ``kaggle-kit cv --pseudo`` makes models such as ``efficientnet_lite0__logreg_pl`` that blend
and report treat like any other.

The defaults (hard labels, threshold 0.9, weight 0.3) were chosen out of fold on the two dev sets (1,600
training and 400 test images each; 5 folds, seed 0, flip TTA; ``bench/pseudo_defaults.py``), as the setting
with the best mean relative change of OOF log loss over both sets and both heads: logreg 0.01815 -> 0.01861
(dogs-vs-cats-mini, efficientnet_lite0) and 0.18184 -> 0.18163 (malaria-mini, squeezenet); mlp 0.03116 ->
0.02908 and 0.18573 -> 0.18857. No setting helped every case: with 400 test images against 1,600 labelled
ones there is little to gain, so it stays an option and blend decides, out of fold, whether a ``_pl`` model
earns weight. Soft labels on every test row did worst (logreg 0.0193 and 0.1909 at weight 0.3); weight 0.3
beat 1.0 on dogs-vs-cats at every threshold. subtle: hard labels need a high threshold: a model that knows nothing predicts about the prior everywhere, and rounding that at 0.5 would
label every test row with the majority class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from kaggle_kit.heads import ExtraRows, HeadOutput, LogregSettings, MlpSettings, fit_logreg, fit_mlp
from kaggle_kit.store import pseudo_twin

LABELS = ("hard", "soft")


@dataclass(frozen=True)
class PseudoSettings:
    """``labels``: 'hard' (0/1 at 0.5) or 'soft' (the probability itself); ``threshold``: the confidence
    max(p, 1 - p) a test row needs in a fold to be used there (0.5: every row); ``weight``: each pseudo-
    labelled row's weight (1: as much as a labelled row). Defaults: chosen out of fold on the dev sets (see
    the module docstring)."""

    labels: str = "hard"
    threshold: float = 0.9
    weight: float = 0.3

    def __post_init__(self):
        if self.labels not in LABELS:
            raise ValueError(f"unknown pseudo-label kind {self.labels!r}; choose one of: {', '.join(LABELS)}")
        if not 0.5 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0.5, 1), got {self.threshold}")
        if not (np.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"weight must be a finite number > 0, got {self.weight}")


@dataclass(frozen=True)
class LogregPseudoSettings:
    """Settings of the ``logreg_pl`` head: the logreg head's and the pseudo-labelling's."""

    head: LogregSettings = field(default_factory=LogregSettings)
    pseudo: PseudoSettings = field(default_factory=PseudoSettings)


@dataclass(frozen=True)
class MlpPseudoSettings:
    """Settings of the ``mlp_pl`` head: the mlp head's and the pseudo-labelling's."""

    head: MlpSettings = field(default_factory=MlpSettings)
    pseudo: PseudoSettings = field(default_factory=PseudoSettings)


def pseudo_labels(test_folds: np.ndarray, *, settings: PseudoSettings,
                  usable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Targets and weights (k, m) of the test rows for each of k folds, from each fold model's test
    predictions ``test_folds`` (m, k). ``usable`` (m,) bool: False for rows never to use (unreadable images).
    A row's weight is ``settings.weight`` where its fold model is sure of it, else 0."""
    P = np.asarray(test_folds, dtype=np.float64).T  # (k, m)
    sure = np.maximum(P, 1.0 - P) >= settings.threshold
    if usable is not None:
        sure &= np.asarray(usable, dtype=bool)[None, :]
    targets = (P > 0.5).astype(np.float64) if settings.labels == "hard" else P
    return targets, np.where(sure, settings.weight, 0.0)


def fit_pseudo(
    fit: Callable[..., HeadOutput],
    views: Sequence[np.ndarray],
    y: np.ndarray,
    fold: np.ndarray,
    test_views: Sequence[np.ndarray],
    *,
    settings: Any,
    pseudo: PseudoSettings = PseudoSettings(),
    tta_train: bool = False,
    tta_predict: bool = False,
    seed: int,
    test_usable: np.ndarray | None = None,
    on_fold: Callable[[int], None] = lambda n: None,
) -> HeadOutput:
    """Pseudo-labelling around the head ``fit`` (e.g. :func:`kaggle_kit.heads.fit_logreg`) with its
    ``settings``: see the module docstring. Arrays as for the heads (:mod:`kaggle_kit.heads`): ``views``
    (n, d) per view, ``y`` (n,), ``fold`` (n,), ``test_views`` (m, d) per view; ``test_usable`` (m,) bool,
    False for test rows never to pseudo-label. Both fits use the same ``seed`` (the same inner folds and
    early-stopping splits). ``params`` holds both fits' parameters and the pseudo-labelled rows per fold."""
    first = fit(views, y, fold, test_views, settings=settings, tta_train=tta_train, tta_predict=tta_predict,
                seed=seed)
    targets, weights = pseudo_labels(first.test_folds, settings=pseudo, usable=test_usable)
    extra = ExtraRows(views=list(test_views), targets=targets, weights=weights)
    second = fit(views, y, fold, test_views, settings=settings, tta_train=tta_train, tta_predict=tta_predict,
                 seed=seed, on_fold=on_fold, extra=extra)
    used = weights > 0
    hard = (targets > 0.5)
    return HeadOutput(
        oof=second.oof,
        test=second.test,
        test_folds=second.test_folds,
        params={
            "first": first.params,
            "refit": second.params,
            "pseudo_rows": used.sum(axis=1).tolist(),  # per fold
            "pseudo_positive": (used & hard).sum(axis=1).tolist(),
            "test_rows": int(targets.shape[1]),
        },
    )


def fit_logreg_pl(views: Sequence[np.ndarray], y: np.ndarray, fold: np.ndarray, test_views: Sequence[np.ndarray],
                  *, settings: LogregPseudoSettings = LogregPseudoSettings(), tta_train: bool = False,
                  tta_predict: bool = False, seed: int, test_usable: np.ndarray | None = None,
                  on_fold: Callable[[int], None] = lambda n: None) -> HeadOutput:
    """The ``logreg_pl`` head: :func:`fit_pseudo` around :func:`kaggle_kit.heads.fit_logreg`."""
    return fit_pseudo(fit_logreg, views, y, fold, test_views, settings=settings.head, pseudo=settings.pseudo,
                      tta_train=tta_train, tta_predict=tta_predict, seed=seed, test_usable=test_usable,
                      on_fold=on_fold)


def fit_mlp_pl(views: Sequence[np.ndarray], y: np.ndarray, fold: np.ndarray, test_views: Sequence[np.ndarray],
               *, settings: MlpPseudoSettings = MlpPseudoSettings(), tta_train: bool = False,
               tta_predict: bool = False, seed: int, test_usable: np.ndarray | None = None,
               on_fold: Callable[[int], None] = lambda n: None) -> HeadOutput:
    """The ``mlp_pl`` head: :func:`fit_pseudo` around :func:`kaggle_kit.heads.fit_mlp`."""
    return fit_pseudo(fit_mlp, views, y, fold, test_views, settings=settings.head, pseudo=settings.pseudo,
                      tta_train=tta_train, tta_predict=tta_predict, seed=seed, test_usable=test_usable,
                      on_fold=on_fold)


# The pseudo-labelling heads, by the name of the head they wrap + '_pl' (the store names models and re-run
# commands after them: :func:`kaggle_kit.store.pseudo_twin`); each takes ``test_usable``.
HEADS: dict[str, tuple[Callable[..., HeadOutput], type]] = {
    pseudo_twin("logreg"): (fit_logreg_pl, LogregPseudoSettings),
    pseudo_twin("mlp"): (fit_mlp_pl, MlpPseudoSettings),
}
