"""Class activation maps (CAM) of a linear head on global-average-pooled features: where a photo's logit comes from.

For a linear head on pooled features the CAM is exact (Zhou et al. 2016). The pooled features are the mean of
the backbone's last feature map F (h, w, c) over its positions, so a head ``logit = w . mean(F) + b`` is the
mean over positions of the map ``F[i, j] . w + b``: each position's value is the logit the head would give a
photo that looked everywhere like that position. :func:`cam` returns that map, and its mean is the logit.

Core (pure numpy, every setting a keyword argument):

- :func:`fold_standardisation`: the head's weights on standardised features taken back to raw features:
  ``w . ((f - mu) / sd) + b = (w / sd) . f + (b - (w / sd) . mu)``;
- :func:`fold_layer_norm`: the same through a LayerNormalization after the pooling (ConvNeXt). Its mean and
  deviation over channels are one number each per photo, so the map stays exact, with per-photo weights;
- :func:`fit_linear_head` / :func:`fold_heads`: the cv ``logreg`` head refitted (the cv stage keeps predictions,
  not fold models): per outer fold, standardisation and an L2 logistic regression at the C that fold chose,
  on the same rows and views, which is the same convex problem, so the same model up to the solver's tolerance;
- :func:`overlay_jpeg`: the map upsampled (bilinear) over a photo's thumbnail, as JPEG bytes.

Edge: :func:`gallery_cams` picks, among the cv results the report loaded (:class:`kaggle_kit.store.CvResult`),
the best ``logreg`` model on a single last-layer feature set (read with :func:`kaggle_kit.store.load_features`),
refits its fold heads, rebuilds the backbone up to its last feature map with the weights the features were
made with (:func:`kaggle_kit.backbones.build_feature_map`; Keras is loaded only then), and maps the report's
gallery photos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
from scipy.special import expit

from kaggle_kit.artifacts import KitError
from kaggle_kit.heads import power_normalise
from kaggle_kit.store import (
    DEFAULT_POOL,
    CvResult,
    FeatureSet,
    FoldPlan,
    command,
    cv_command,
    cv_dir,
    features_advice,
    features_dir,
    load_features,
)
from kaggle_kit.views import array_name
from kaggle_kit.weights import ENV_VAR

if TYPE_CHECKING:
    from kaggle_kit.backbones import WeightsChoice

# The refit's solver settings: tight enough that the refitted fold models reproduce the cv stage's OOF
# predictions to about 1e-3 (the report states the largest difference it finds).
REFIT_TOL = 1e-8
REFIT_MAX_ITER = 2000
COLORMAP = "RdBu_r"  # red: evidence for the positive class, blue: for the negative one, white: neither
OVERLAY_ALPHA = 0.55


# ------------------------------------------------------------------------------------------------ the core
def cam(feature_map: np.ndarray, weights: np.ndarray, bias: float, *, power: float = 1.0) -> np.ndarray:
    """The class activation map of a linear head: (h, w) float64, ``feature_map[i, j] . weights + bias``.

    ``feature_map`` (h, w, c) is the backbone's last feature map before global average pooling, ``weights``
    (c,) and ``bias`` the head's on the raw pooled features. The map's mean over positions equals the head's
    logit for the photo: ``cam(F, w, b).mean() == w . F.mean(axis=(0, 1)) + b``.

    With ``power`` p != 1 the head sees z = sign(g) |g|^p of the pooled features g (the logreg head's power
    normalisation), which is not linear in the positions; the map is then the head linearised at this photo's
    g: ``w . (z + p |g|^(p-1) (F[i, j] - g)) + b``. Its mean is still exactly the logit (the deviations from g
    average to zero) and each position shows what its difference from the photo's average adds.
    """
    F = np.asarray(feature_map, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if F.ndim != 3 or w.shape != (F.shape[-1],):
        raise ValueError(f"feature_map must be (h, w, c) and weights (c,), got {F.shape} and {w.shape}")
    if power == 1.0:
        return F @ w + float(bias)
    g = F.mean(axis=(0, 1))
    z = np.sign(g) * np.abs(g) ** power
    # subtle: a channel whose mean is 0 is 0 everywhere (ReLU maps), so its slope never counts; keep it finite
    slope = power * np.maximum(np.abs(g), 1e-12) ** (power - 1.0)
    return float(z @ w + bias) + (F - g) @ (w * slope)


def fold_standardisation(coef: np.ndarray, intercept: float, *, mean: np.ndarray,
                         sd: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights (d,) and bias on raw features of a linear head fitted on standardised ones, (f - mean) / sd."""
    w = np.asarray(coef, dtype=np.float64) / np.asarray(sd, dtype=np.float64)
    return w, float(intercept) - float(w @ np.asarray(mean, dtype=np.float64))


def fold_layer_norm(weights: np.ndarray, bias: float, *, pooled: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                    epsilon: float) -> tuple[np.ndarray, float]:
    """One photo's weights (c,) and bias on the pooled map g (c,) of a head on LayerNorm(g).

    LayerNorm(g) = gamma (g - m) / s + beta with m the mean of g over channels and s = sqrt(var(g) + epsilon).
    With u = weights * gamma: ``weights . LayerNorm(g) + bias = ((u - mean(u)) / s) . g + (weights . beta + bias)``,
    because m is itself the mean of g: only s ties the result to this photo.
    """
    g = np.asarray(pooled, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    u = w * np.asarray(gamma, dtype=np.float64)
    s = math.sqrt(float(g.var()) + float(epsilon))
    return (u - u.mean()) / s, float(w @ np.asarray(beta, dtype=np.float64)) + float(bias)


@dataclass(frozen=True)
class LinearHead:
    """A logistic head on raw features: ``weights`` (d,) float64 and ``bias``; ``C`` it was fitted with and the
    number of fitting rows (views counted)."""

    weights: np.ndarray
    bias: float
    C: float
    n_fit: int

    def logits(self, X: np.ndarray) -> np.ndarray:
        """(n,) logits of raw features X (n, d)."""
        return np.asarray(X, dtype=np.float64) @ self.weights + self.bias


def fit_linear_head(views: Sequence[np.ndarray], y: np.ndarray, rows: np.ndarray, *, C: float,
                    tol: float = REFIT_TOL, max_iter: int = REFIT_MAX_ITER) -> LinearHead:
    """Standardisation + L2 logistic regression on ``rows`` of every view, weights taken back to raw features.

    ``views``: (n, d) arrays of the same rows (the photos, their flips), power-normalised already where the cv
    head was (see :func:`fold_heads`); ``y`` (n,) 0/1; ``rows`` (k,) indices. The objective of the cv stage's
    ``logreg`` head (:mod:`kaggle_kit.heads`): mean log loss over the fitting rows + ||w||^2 / (2 C n),
    intercept unpenalised, which is scikit-learn's ``C``.
    """
    from sklearn.linear_model import LogisticRegression

    rows = np.asarray(rows)
    X = np.concatenate([np.asarray(v[rows], dtype=np.float64) for v in views])
    target = np.tile(np.asarray(y)[rows], len(views))
    mean, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd < 1e-6] = 1.0  # as the cv stage: a constant column stays (it gets no weight)
    X -= mean  # in place: at Kaggle's size X is 40,000 x 2,048 doubles
    X /= sd
    model = LogisticRegression(C=C, tol=tol, max_iter=max_iter)
    model.fit(X, target)
    w, b = fold_standardisation(model.coef_[0], model.intercept_[0], mean=mean, sd=sd)
    return LinearHead(weights=w, bias=b, C=float(C), n_fit=len(X))


def fold_heads(views: Sequence[np.ndarray], y: np.ndarray, fold: np.ndarray, *, Cs: Sequence[float],
               folds: Sequence[int], power: float = 1.0) -> dict[int, LinearHead]:
    """The fold models ``folds`` of a cv plan: fold f's head is fitted on the rows of the other folds (``fold``
    (n,) holds each row's fold, -1 for rows left out) with ``Cs[f]``. The model that predicted fold f's rows.
    ``power``: the cv head's power normalisation; the heads' weights are then on the normalised features."""
    fold = np.asarray(fold)
    views = [power_normalise(v, power) for v in views]
    return {int(f): fit_linear_head(views, y, np.flatnonzero((fold >= 0) & (fold != f)), C=float(Cs[f]))
            for f in sorted(set(int(f) for f in folds))}


def overlay_jpeg(thumbnail_jpeg: bytes, cam_map: np.ndarray, *, scale: float, alpha: float = OVERLAY_ALPHA,
                 quality: int = 85) -> bytes | None:
    """JPEG bytes of ``cam_map`` (h, w) upsampled bilinearly over the thumbnail (any size, any aspect).

    subtle: the backbone saw the photo squashed to a square, so stretching the square map back over the whole
    photo puts every cell over the part of the photo it was computed from. Colours: ``COLORMAP`` from -scale
    (blue) through 0 (white) to +scale (red); values beyond are clipped. None if the thumbnail cannot be decoded.
    """
    import cv2
    from matplotlib import colormaps

    img = cv2.imdecode(np.frombuffer(thumbnail_jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    up = cv2.resize(np.asarray(cam_map, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    v = np.clip(up / max(float(scale), 1e-12), -1.0, 1.0)
    rgb = colormaps[COLORMAP]((v + 1.0) / 2.0)[..., :3] * 255.0
    mixed = (1.0 - alpha) * img.astype(np.float64) + alpha * rgb[..., ::-1]  # the colours in OpenCV's BGR
    ok, buf = cv2.imencode(".jpg", np.clip(np.rint(mixed), 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


# ------------------------------------------------------------------------------------------------- the edge
@dataclass(frozen=True)
class CamGallery:
    """Heatmaps of the report's gallery rows, in gallery order (None where a photo could not be mapped).

    ``model``: the cv model mapped (``<feature set>__logreg``); ``maps`` (h, w) float64 CAMs of the photos as
    they are (not flipped); ``logits``: the fold head's logit of each photo (= its map's mean); ``p``: the
    refitted fold model's prediction as the cv stage makes it (mean over the views it predicts with);
    ``p_gap``: the largest |p - the cv stage's OOF prediction (first repeat)| over the gallery;
    ``feature_gap``: the largest |recomputed - cached pooled feature| relative to the largest cached value.
    """

    model: str
    feature_set: str
    backbone: str
    image_size: int
    weights: str
    Cs: dict[int, float]
    views_fitted: int
    views_predicted: int
    grid: tuple[int, int]
    maps: tuple[np.ndarray | None, ...]
    logits: tuple[float | None, ...]
    p: tuple[float | None, ...]
    p_gap: float
    feature_gap: float
    jpegs: tuple[bytes | None, ...]
    scales: tuple[float | None, ...]


def choose_model(exp_dir: Path, results: Mapping[str, CvResult]) -> tuple[CvResult, FeatureSet]:
    """The model to map: the best-scoring (OOF log loss) ``logreg`` model of ``results`` (loaded by
    :func:`kaggle_kit.store.load_cv_results`) on one feature set made by a registered backbone from its last
    layer, with that feature set (:func:`kaggle_kit.store.load_features`). A model whose feature set is gone or
    damaged is passed over; none left is a one-line :class:`KitError`."""
    from kaggle_kit.backbones import REGISTRY

    candidates = []
    for model, result in results.items():
        if result.head != "logreg" or len(result.features) != 1:
            continue
        try:
            fs = load_features(features_dir(exp_dir, result.features[0]))
        except KitError:
            continue
        if (fs.backbone not in REGISTRY or not fs.input_size or fs.layer not in (None, "last")
                or fs.pool != DEFAULT_POOL):  # the map is exact for the mean over positions only
            continue
        loss = result.scores.get("oof_logloss")
        candidates.append((loss if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf, model,
                           result, fs))
    if not candidates:
        raise KitError("no model to map: heatmaps need a 'logreg' model on one backbone's average-pooled "
                       f"last-layer features (e.g. '{command(exp_dir, 'cv', '--head', 'logreg')}')")
    _, _, result, fs = min(candidates, key=lambda c: (c[0], c[1]))
    return result, fs


def weights_for_features(fs: FeatureSet, *, environ: Mapping[str, str] | None = None) -> WeightsChoice:
    """The :class:`~kaggle_kit.backbones.WeightsChoice` of the weights feature set ``fs`` was made with, found
    again and checked against its recorded identity; a one-line :class:`KitError` when they cannot be."""
    from kaggle_kit.backbones import WeightsChoice, get_backbone, resolve_weights

    backbone, kind, recorded = get_backbone(fs.backbone), fs.weights_kind, fs.weights_path
    if kind == "none":
        return WeightsChoice("none", None, fs.weights)
    if kind == "file":
        if recorded and Path(recorded).is_file():
            choice = resolve_weights(backbone, recorded, environ=environ)
        else:  # moved, or made before paths were recorded: the published file in the weights folders, if it is it
            try:
                choice = resolve_weights(backbone, "imagenet", image_size=fs.input_size, environ=environ)
            except KitError:
                choice = None
            if choice is None or choice.identity != fs.weights:
                raise KitError(f"the weights file the features '{fs.name}' were made with "
                               f"({recorded or 'path not recorded'}) is not there any more, nor in the weights "
                               f"folders (${ENV_VAR})")
    elif kind == "imagenet":
        where = str(Path(recorded).parent) if recorded and Path(recorded).is_file() else "imagenet"
        choice = resolve_weights(backbone, where, image_size=fs.input_size, environ=environ)
    else:
        raise KitError(f"the features '{fs.name}' were not made by 'kaggle-kit features' (weights: {kind})")
    if choice.identity != fs.weights:
        raise KitError(f"the weights found now ({choice.identity}) are not those the features '{fs.name}' were "
                       f"made with ({fs.weights})")
    return choice


def gallery_cams(exp_dir: Path, *, plan: FoldPlan, results: Mapping[str, CvResult], rows: np.ndarray,
                 thumbnails: Sequence[bytes | None], files: dict[str, Path], batch_size: int = 8,
                 progress: bool = False, warn: Callable[[str], None] = print) -> CamGallery:
    """Map the gallery's training ``rows`` (indices into ``plan``'s rows) with the best ``logreg`` model of
    ``results`` (see :func:`choose_model`); ``thumbnails`` are the gallery's JPEGs (the maps go over them) and
    ``files`` maps training ids to photos. Raises a one-line :class:`KitError` saying why when nothing can be
    mapped (no such model, its weights not found, ...)."""
    from tqdm import tqdm

    from kaggle_kit.backbones import build_feature_map, get_backbone
    from kaggle_kit.images import decode_image

    rows = np.asarray(rows, dtype=np.int64)
    result, fs = choose_model(exp_dir, results)
    model = result.model
    rerun = cv_command(exp_dir, model=model, head=result.head, features=result.features)
    if fs.train_ids != tuple(plan.train_ids):
        raise KitError(f"the feature set '{fs.name}' has other training rows than the fold plan; "
                       f"{features_advice(fs.path, fs.manifest)}")
    try:
        Cs = [float(c) for c in result.params["per_repeat"][0]["C"]]
    except (KeyError, IndexError, TypeError, ValueError):
        raise KitError(f"{cv_dir(exp_dir, model)} does not say which C each fold chose; re-run '{rerun} "
                       "--force'") from None
    fold = np.where(np.isfinite(result.oof[0]), plan.plan[0], -1)  # rows left out by cv (unreadable) stay out
    if len(Cs) != int(plan.plan[0].max()) + 1:
        raise KitError(f"{model}'s manifest lists {len(Cs)} C values for {int(plan.plan[0].max()) + 1} folds; "
                       f"re-run '{rerun} --force'")
    train = [fs.arrays[array_name("train", suffix)] for suffix in fs.view_suffixes]  # as cv took them
    fit_views = train if result.tta_train else train[:1]
    pred_views = train if result.tta_predict else train[:1]
    y = np.asarray(fs.y, dtype=np.int64)
    mapped = rows[fold[rows] >= 0]
    power = float(result.params.get("settings", {}).get("power", 1.0))  # cv results made before it existed: 1
    heads = fold_heads(fit_views, y, fold, Cs=Cs, folds=fold[mapped], power=power)

    backbone = get_backbone(fs.backbone)
    size = int(fs.input_size)
    weights = weights_for_features(fs)
    net = build_feature_map(backbone, image_size=size, weights=weights)
    if net.layer_norm is not None and power != 1.0:
        raise KitError(f"no heatmaps for {model}: its head power-normalises {backbone.name}'s layer-normalised "
                       "features, which the maps cannot follow yet")
    ids = [plan.train_ids[r] for r in rows]
    maps: list[np.ndarray | None] = [None] * len(rows)
    logits: list[float | None] = [None] * len(rows)
    p: list[float | None] = [None] * len(rows)
    p_gap = feature_gap = 0.0
    scale_ref = float(np.abs(fs.arrays["train"][mapped]).max()) if len(mapped) else 1.0
    todo = [i for i, r in enumerate(rows) if fold[r] >= 0 and ids[i] in files]
    bar = tqdm(total=len(todo), desc="heatmaps", unit="img", disable=not progress, leave=False)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        photos = [decode_image(files[ids[i]], size) for i in batch]
        batch = [i for i, photo in zip(batch, photos) if photo is not None]
        if not batch:
            continue
        feature_maps, pooled = net.predict([photo for photo in photos if photo is not None])
        for i, F, g in zip(batch, feature_maps, pooled):
            r = int(rows[i])
            head = heads[int(fold[r])]
            w, b = head.weights, head.bias
            if net.layer_norm is not None:
                gamma, beta, eps = net.layer_norm
                w, b = fold_layer_norm(w, b, pooled=F.mean(axis=(0, 1), dtype=np.float64), gamma=gamma, beta=beta,
                                       epsilon=eps)
            maps[i] = cam(F, w, b, power=power)
            logits[i] = float(maps[i].mean())
            p[i] = float(np.mean([expit(head.logits(power_normalise(v[r:r + 1], power))[0]) for v in pred_views]))
            p_gap = max(p_gap, abs(p[i] - float(result.oof[0, r])))
            feature_gap = max(feature_gap, float(np.abs(g - fs.arrays["train"][r]).max()) / max(scale_ref, 1e-12))
        bar.update(len(batch))
    bar.close()
    if feature_gap > 1e-2:
        raise KitError(f"the backbone rebuilt now gives other features than the cached '{fs.name}' (largest "
                       f"difference {feature_gap:.2g} of the largest feature); "
                       f"{features_advice(fs.path, fs.manifest, force=True)}")
    if p_gap > 1e-2:
        warn(f"warning: the refitted fold heads of {model} differ from its cv predictions by up to {p_gap:.3g}")
    scales = [float(np.abs(m).max()) if m is not None else None for m in maps]
    jpegs = tuple(overlay_jpeg(t, m, scale=s) if m is not None and t is not None and s else None
                  for t, m, s in zip(thumbnails, maps, scales))
    grid = next((tuple(m.shape) for m in maps if m is not None), (0, 0))
    return CamGallery(model=model, feature_set=fs.name, backbone=backbone.name, image_size=size,
                      weights=weights.identity, Cs={f: h.C for f, h in heads.items()},
                      views_fitted=len(fit_views), views_predicted=len(pred_views), grid=grid, maps=tuple(maps),
                      logits=tuple(logits), p=tuple(p), p_gap=p_gap, feature_gap=feature_gap, jpegs=jpegs,
                      scales=tuple(scales))
