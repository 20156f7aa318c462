"""Class activation maps: exact for a linear head (the map's mean is the head's logit), through the head's
standardisation and ConvNeXt's LayerNorm, for real forward passes; the refit reproduces the cv stage's head."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from conftest import MINI, SQUEEZENET_H5, make_competition, write_cv_model
from kaggle_kit import cam as C
from kaggle_kit.artifacts import KitError, sha256_file
from kaggle_kit.backbones import WeightsChoice, build_extractor, build_feature_map, get_backbone
from kaggle_kit.data import discover
from kaggle_kit.folds import ensure_plan
from kaggle_kit.heads import LogregSettings, fit_logreg, power_normalise
from kaggle_kit.images import decode_image
from kaggle_kit.keras_loader import load_keras
from kaggle_kit.store import experiment_dir, features_dir, load_cv_results, save_feature_set

NONE = WeightsChoice("none", None, "none (random init, seed 0)")
SQUEEZENET = WeightsChoice("file", SQUEEZENET_H5, "test")
PHOTOS = [f"train/{c}.{i}.jpg" for i in range(1, 8) for c in ("cat", "dog")]  # 14 real photos, 7 of each


# ------------------------------------------------------------------------------------------------ the core
def test_cam_mean_is_the_logit_of_the_pooled_features():
    rng = np.random.default_rng(0)
    F, w = rng.normal(size=(7, 5, 16)), rng.normal(size=16)
    m = C.cam(F, w, -0.7)
    assert m.shape == (7, 5)
    assert m.mean() == pytest.approx(w @ F.mean(axis=(0, 1)) - 0.7, abs=1e-12)
    assert m[2, 3] == pytest.approx(F[2, 3] @ w - 0.7)  # each position: the logit of a photo made of it
    with pytest.raises(ValueError, match=r"\(h, w, c\)"):
        C.cam(F[0], w, 0.0)


def test_fold_standardisation_gives_the_pipelines_logits():
    rng = np.random.default_rng(1)
    X = rng.normal(3.0, [0.1, 1.0, 10.0, 2.0], size=(200, 4))
    y = ((X[:, 0] - 3) * 10 + (X[:, 2] - 3) / 10 + rng.normal(size=200) > 0).astype(int)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.3)).fit(X, y)
    scaler, lr = pipe[0], pipe[1]
    w, b = C.fold_standardisation(lr.coef_[0], lr.intercept_[0], mean=scaler.mean_, sd=scaler.scale_)
    np.testing.assert_allclose(X @ w + b, pipe.decision_function(X), rtol=1e-10, atol=1e-10)


def test_fold_layer_norm_is_exact_per_photo():
    rng = np.random.default_rng(2)
    F = rng.normal(0.5, 2.0, size=(4, 6, 32))
    gamma, beta, w, b, eps = rng.normal(size=32), rng.normal(size=32), rng.normal(size=32), 0.4, 1e-6
    g = F.mean(axis=(0, 1))
    normed = gamma * (g - g.mean()) / np.sqrt(g.var() + eps) + beta  # Keras's LayerNormalization over channels
    w_eff, b_eff = C.fold_layer_norm(w, b, pooled=g, gamma=gamma, beta=beta, epsilon=eps)
    assert C.cam(F, w_eff, b_eff).mean() == pytest.approx(w @ normed + b, abs=1e-10)


def test_fit_linear_head_is_the_standardised_logistic_regression():
    rng = np.random.default_rng(3)
    views = [rng.normal(size=(120, 6)) * [1, 5, 0.2, 1, 1, 3] + 2.0]
    views.append(views[0] + rng.normal(scale=0.1, size=(120, 6)))
    y = (views[0][:, 0] + rng.normal(size=120) > 2).astype(int)
    rows = np.arange(0, 120, 2)
    head = C.fit_linear_head(views, y, rows, C=0.5)
    X = np.concatenate([v[rows] for v in views])
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-10, max_iter=5000))
    pipe.fit(X, np.tile(y[rows], 2))
    np.testing.assert_allclose(head.logits(views[0]), pipe.decision_function(views[0]), atol=1e-5)
    assert head.n_fit == 120


def test_the_map_of_a_power_normalised_head_averages_to_its_logit_and_is_the_plain_map_at_power_1():
    rng = np.random.default_rng(3)
    F = np.maximum(rng.normal(size=(5, 4, 6)), 0)  # a ReLU map: some channels all zero somewhere
    F[..., 2] = 0.0  # a channel that never fires
    w, b = rng.normal(size=6), 0.3
    g = F.mean(axis=(0, 1))
    for power in (0.5, 0.75):
        m = C.cam(F, w, b, power=power)
        assert np.isfinite(m).all() and m.shape == (5, 4)
        assert m.mean() == pytest.approx(float((np.sign(g) * np.abs(g) ** power) @ w + b), abs=1e-12)
    np.testing.assert_allclose(C.cam(F, w, b, power=1.0), F @ w + b)
    # a photo that looks the same everywhere: every position is the logit
    flat = np.broadcast_to(g, F.shape)
    np.testing.assert_allclose(C.cam(flat, w, b, power=0.5), float((np.sign(g) * np.abs(g) ** 0.5) @ w + b))
    # positions differ by their deviation from the average, through the slope of |g|^p at the photo's g
    d = C.cam(F, w, b, power=0.5) - C.cam(flat, w, b, power=0.5)
    np.testing.assert_allclose(d, (F - g) @ (w * 0.5 * np.maximum(g, 1e-12) ** -0.5))


def test_fold_heads_reproduce_the_cv_stage_logreg_oof():
    """The refit is the cv stage's fold model: same rows, views, standardisation and C give its OOF predictions."""
    rng = np.random.default_rng(4)
    n, d = 300, 20
    y = rng.integers(0, 2, n)
    base = rng.normal(size=(n, d)) + 0.8 * y[:, None] * (rng.uniform(size=d) > 0.5)
    views = [base.astype(np.float32), (base + rng.normal(scale=0.3, size=(n, d))).astype(np.float32)]
    fold = np.arange(n) % 4
    fold[7] = -1  # a row left out (an unreadable photo)
    out = fit_logreg(views, y, fold, [v[:5] for v in views], settings=LogregSettings(), tta_train=True,
                     tta_predict=True, seed=0)
    heads = C.fold_heads(views, y, fold, Cs=out.params["C"], folds=range(4), power=LogregSettings().power)
    p = np.full(n, np.nan)
    for f, head in heads.items():
        rows = np.flatnonzero(fold == f)
        p[rows] = np.mean([1 / (1 + np.exp(-head.logits(power_normalise(v[rows], 0.5)))) for v in views], axis=0)
    ok = fold >= 0
    assert np.isnan(out.oof[~ok]).all()
    np.testing.assert_allclose(p[ok], out.oof[ok], atol=2e-3)


def test_overlay_is_red_where_the_map_is_positive_and_blue_where_negative():
    import cv2

    gray = np.full((60, 90, 3), 128, np.uint8)
    thumb = cv2.imencode(".jpg", gray)[1].tobytes()
    m = np.array([[-2.0, 2.0], [-2.0, 2.0]])  # left half cat-ward (blue), right half dog-ward (red)
    out = cv2.imdecode(np.frombuffer(C.overlay_jpeg(thumb, m, scale=2.0), np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == gray.shape
    left, right = out[:, :10].reshape(-1, 3).mean(axis=0), out[:, -10:].reshape(-1, 3).mean(axis=0)
    assert left[0] > left[2] + 25 and right[2] > right[0] + 25  # BGR: blue on the left, red on the right
    assert C.overlay_jpeg(b"not a jpeg", m, scale=1.0) is None


# ------------------------------------------------------------------------------------- the model to map
@pytest.fixture
def experiment(tmp_path):
    """experiments/x on empty image files: feature sets written through the store, and a fold plan."""
    dataset = discover(make_competition(tmp_path / "comp", n_per_class=15, n_test=3, empty=True))
    exp_dir = experiment_dir("x", root=tmp_path)
    rng = np.random.default_rng(0)

    def features(name, backbone, *, input_size=224, **kw):
        arrays = {"train": rng.standard_normal((dataset.n_train, 4)).astype(np.float32),
                  "test": rng.standard_normal((dataset.n_test, 4)).astype(np.float32)}
        return save_feature_set(features_dir(exp_dir, name), dataset, arrays, key=name,
                                image_list_hash=dataset.image_list_hash(), backbone=backbone,
                                **{"weights": "none (random init, seed 0)", "weights_kind": "none", **kw},
                                input_size=input_size)

    plan = ensure_plan(exp_dir, y=dataset.y, train_ids=dataset.train_ids, test_ids=dataset.test_ids, n_folds=3,
                       repeats=1, seed=0)[0]
    return exp_dir, plan, features


def test_the_model_mapped_is_the_best_logreg_on_one_registered_backbones_last_layer(experiment):
    exp_dir, plan, features = experiment
    features("resnet50", "resnet50")
    features("xception", "xception", input_size=299)
    features("mine", "my_own_net")  # not a registered backbone: nothing to rebuild
    features("sized", "resnet50", input_size=None)  # made by another tool, size unknown
    features("mid", "resnet50", details={"layer": "conv4_block6_out"})  # not the last feature map
    features("maxed", "resnet50", details={"pool": "avgmax"})  # not the map's mean: the map is not exact
    noise = np.random.default_rng(1).normal(size=plan.n_train)

    def model(name, strength, *, head="logreg", on=None):
        oof = expit(strength * (2.0 * plan.y - 1.0) + noise)[None, :]
        write_cv_model(exp_dir, name, plan, oof, np.full(plan.n_test, 0.5), head=head,
                       features=on or [name.split("__")[0]])

    model("resnet50__logreg", 1.0)
    model("xception__logreg", 1.5)
    for better in ("resnet50__mlp", "mine__logreg", "sized__logreg", "mid__logreg", "maxed__logreg", "gone__logreg"):
        model(better, 3.0, head=better.split("__")[1])  # each better, none mappable
    model("concat__logreg", 3.0, on=["resnet50", "xception"])  # a head on two feature sets: no single map
    results = load_cv_results(exp_dir, plan=plan)
    result, fs = C.choose_model(exp_dir, results)
    assert (result.model, fs.name, fs.backbone, fs.input_size) == ("xception__logreg", "xception", "xception", 299)
    del results["xception__logreg"]
    assert C.choose_model(exp_dir, results)[0].model == "resnet50__logreg"
    del results["resnet50__logreg"]
    with pytest.raises(KitError, match="^no model to map: .*'kaggle-kit cv --exp x --head logreg'"):
        C.choose_model(exp_dir, results)


def test_the_weights_of_a_feature_set_are_found_again_and_checked(experiment):
    _, _, features = experiment
    digest = f"sha256:{sha256_file(SQUEEZENET_H5)}"
    made = features("squeezenet", "squeezenet", input_size=227, weights=digest, weights_kind="file",
                    weights_path=SQUEEZENET_H5)
    choice = C.weights_for_features(made, environ={})
    assert (choice.kind, choice.path, choice.identity) == ("file", SQUEEZENET_H5.resolve(), digest)
    assert C.weights_for_features(features("random", "resnet50"), environ={}).kind == "none"
    other = features("other", "squeezenet", input_size=227, weights="sha256:0123", weights_kind="file",
                     weights_path=SQUEEZENET_H5)
    with pytest.raises(KitError, match=r"weights found now \(sha256:.*\) are not those the features 'other' were"):
        C.weights_for_features(other, environ={})
    external = features("theirs", "resnet50", weights="from a notebook", weights_kind="external")
    with pytest.raises(KitError, match="were not made by 'kaggle-kit features'"):
        C.weights_for_features(external, environ={})


# -------------------------------------------------------------------------------- real forward passes
def _photos(size: int) -> np.ndarray:
    return np.stack([decode_image(MINI / p, size) for p in PHOTOS])


@pytest.mark.slow  # builds Keras models (every backbone's CAM identity: tests/test_backbones.py, in its one build)
@pytest.mark.parametrize("name, size, weights", [("squeezenet", 227, SQUEEZENET), ("convnext_tiny", 96, NONE)])
def test_cam_mean_equals_the_heads_logit_for_real_photos(name, size, weights):
    """A head fitted on the extractor's features; the CAM from the feature-map model (a second build) of two
    held-out photos averages to that head's logit for them, to 1e-4. ConvNeXt also checks the LayerNorm fold."""
    keras = load_keras()

    backbone = get_backbone(name)
    photos = _photos(size)
    y = np.array([p.startswith("train/dog") for p in PHOTOS], dtype=int)
    features = np.asarray(build_extractor(backbone, image_size=size, weights=weights)(photos, training=False),
                          dtype=np.float64)
    keras.backend.clear_session()
    fit, held = np.arange(2, len(PHOTOS)), np.array([0, 1])
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(features[fit], y[fit])
    w, b = C.fold_standardisation(pipe[1].coef_[0], pipe[1].intercept_[0], mean=pipe[0].mean_, sd=pipe[0].scale_)
    net = build_feature_map(backbone, image_size=size, weights=weights)
    assert (net.layer_norm is not None) == name.startswith("convnext")
    maps, pooled = net.predict(photos[held])
    assert maps.ndim == 4 and maps.shape[-1] == (backbone.width if name == "squeezenet" else 768)
    np.testing.assert_allclose(pooled, features[held], rtol=1e-4, atol=1e-4)  # the same network, rebuilt
    for i, F in zip(held, maps):
        wi, bi = w, b
        if net.layer_norm is not None:
            gamma, beta, eps = net.layer_norm
            wi, bi = C.fold_layer_norm(w, b, pooled=F.mean(axis=(0, 1), dtype=np.float64), gamma=gamma, beta=beta,
                                       epsilon=eps)
        heat = C.cam(F, wi, bi)
        assert heat.shape == F.shape[:2] and heat.std() > 0
        assert heat.mean() == pytest.approx(pipe.decision_function(features[i:i + 1])[0], abs=1e-4)
    keras.backend.clear_session()
