"""Augmented views (``features --views N``): the transforms, their arrays through extraction, cache and resume,
and cv training on every view."""

import numpy as np
import pytest
from typer.testing import CliRunner

import kaggle_kit.features as features_mod
from kaggle_kit.artifacts import KitError
from kaggle_kit.backbones import REGISTRY, WeightsChoice
from kaggle_kit.cli import app
from kaggle_kit.data import discover
from kaggle_kit.engine import Predictor
from kaggle_kit.features import FeatureSettings, extract_features, write_feature_set
from kaggle_kit.images import decode_image
from kaggle_kit.store import features_command, load_features
from kaggle_kit.views import (
    CATALOGUES,
    apply_view,
    flipped,
    view_names,
    view_suffixes,
    views_options,
)

SIZE = 32
NONE = WeightsChoice("none", None, "none (random init, seed 0)")


def position_image(size: int = 32) -> np.ndarray:
    """One (1, s, s, 3) uint8 image whose red channel is the row and green channel the column (x 8)."""
    rows, cols = np.mgrid[:size, :size]
    img = np.stack([rows * 8, cols * 8, np.full_like(rows, 100)], axis=-1)
    return img[None].astype(np.uint8)


# ---------------------------------------------------------------------------------------------- the transforms
def test_catalogues_and_their_limits():
    assert view_names(3, "rotations") == ("rot90", "rot180", "rot270")
    assert view_names(2) == ("zoom", "crop_tl") and view_names(0, "rotations") == ()
    for n, kind in ((4, "rotations"), (7, "crops")):
        with pytest.raises(KitError) as info:
            view_names(n, kind)
        assert "\n" not in str(info.value) and f"--views {n} is out of range for --view-kind {kind}" in str(info.value)
    with pytest.raises(KitError, match="--view-kind 'tilts' is not one of: crops, rotations"):
        view_names(1, "tilts")
    for kind, names in CATALOGUES.items():
        assert views_options(names[:2]) == (2, kind)
    assert view_suffixes(True, ("zoom",)) == ["", "flip", "zoom", "zoom_flip"]
    assert view_suffixes(False, ("rot90", "rot180")) == ["", "rot90", "rot180"]


def test_quarter_turns_with_flips_are_the_eight_symmetries_of_the_square():
    img = position_image()
    turned = img
    for _ in range(4):
        turned = apply_view(turned, "rot90")
    np.testing.assert_array_equal(turned, img)
    np.testing.assert_array_equal(apply_view(img, "rot180"), img[:, ::-1, ::-1])
    # rot90 is counter-clockwise: the top row becomes the left column, read bottom to top
    np.testing.assert_array_equal(apply_view(img, "rot90")[0, :, 0], img[0, 0, ::-1])
    views = [img] + [apply_view(img, v) for v in CATALOGUES["rotations"]]
    views += [flipped(v) for v in views]
    assert len({v.tobytes() for v in views}) == 8 and all(v.flags.c_contiguous for v in views)


def test_crops_enlarge_the_part_of_the_image_they_name():
    img = position_image()
    out = {name: apply_view(img, name) for name in CATALOGUES["crops"]}
    assert all(v.shape == img.shape and v.dtype == np.uint8 for v in out.values())
    red, green = (lambda v: v[0, ..., 0].mean()), (lambda v: v[0, ..., 1].mean())
    # central zooms keep the centre; corner crops move towards their corner
    for name in ("zoom", "zoom_in"):
        assert abs(red(out[name]) - red(img)) < 2 and abs(green(out[name]) - green(img)) < 2
    assert red(out["crop_tl"]) < red(out["zoom"]) < red(out["crop_br"])
    assert green(out["crop_tl"]) < green(out["crop_tr"]) and red(out["crop_tr"]) < red(out["crop_bl"])
    # a zoom spreads fewer source rows over the image: its row gradient is flatter, the closer zoom flatter still
    span = lambda v: float(v[0, -1, :, 0].mean()) - float(v[0, 0, :, 0].mean())  # noqa: E731
    assert span(out["zoom_in"]) < span(out["zoom"]) < span(img)
    np.testing.assert_array_equal(apply_view(img, "zoom"), out["zoom"])  # deterministic


# --------------------------------------------------------------------------------------- extraction and cache
def settings(**kw):
    base = dict(backbone=REGISTRY["resnet50"], weights=NONE, image_size=SIZE, batch_size=4, shard_size=8)
    return FeatureSettings(**{**base, **kw})


def numpy_model(monkeypatch, calls: list, stop_after: int | None = None):
    """A NumPy 'backbone' (channel means and a row/column asymmetry: 5 wide) that views change, installed as
    features' predictor; it raises Ctrl-C after ``stop_after`` calls."""

    def predict(batch):
        if stop_after is not None and len(calls) >= stop_after:
            raise KeyboardInterrupt
        calls.append(len(batch))
        x = batch.astype(np.float32)
        half = x.shape[1] // 2
        return np.concatenate([x.mean(axis=(1, 2)), x[:, :half].mean(axis=(1, 2, 3))[:, None],
                               x[:, :, :half].mean(axis=(1, 2, 3))[:, None]], axis=1)

    def build(backbone, *, image_size, weights, batch_size, layers, pool):
        return Predictor(predict=predict, widths=(5,), build_seconds=0.0, warmup_seconds=0.0,
                         keras_backend="numpy", keras_version="-")

    monkeypatch.setattr(features_mod, "build_predictor", build)
    return predict


def test_each_view_is_cached_beside_the_flip_with_the_same_rows(small_comp, tmp_path, monkeypatch):
    calls: list = []
    predict = numpy_model(monkeypatch, calls)
    ds = discover(small_comp)
    views = ("rot90", "rot180")
    out = tmp_path / "experiments" / "default" / "features" / "resnet50_32"
    result = extract_features(ds, out, settings(tta="flip", views=views), progress=False)
    fs = load_features(out, image_list_hash=ds.image_list_hash())
    assert fs.views == views and fs.view_suffixes == ["", "flip", "rot90", "rot90_flip", "rot180", "rot180_flip"]
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(
        f"{split}{'_' + s if s else ''}.npy" for split in ("train", "test") for s in fs.view_suffixes)
    for split, paths in (("train", ds.train_paths()), ("test", ds.test_paths())):
        photos = np.stack([decode_image(p, SIZE) for p in paths])
        for view in views:
            np.testing.assert_allclose(fs.arrays[f"{split}_{view}"], predict(apply_view(photos, view)), rtol=1e-5)
            np.testing.assert_allclose(fs.arrays[f"{split}_{view}_flip"], predict(flipped(apply_view(photos, view))),
                                       rtol=1e-5)
        np.testing.assert_allclose(fs.arrays[split], predict(photos), rtol=1e-5)
    assert not np.allclose(fs.arrays["train_rot90"], fs.arrays["train"])
    assert "x6 (flip, rot90, rot180 and their flips)" in result.lines()[0]
    assert "--views 2 --view-kind rotations" in features_command(out, fs.manifest)

    # the views are part of the key; a set without views keeps the key it always had
    plain = settings(tta="flip")
    assert plain.key(ds.image_list_hash()) != fs.key == settings(tta="flip", views=views).key(ds.image_list_hash())
    assert plain.key("h") == features_mod.sha256_json({
        "format": "kaggle-kit/features/1", "backbone": "resnet50", "builder": REGISTRY["resnet50"].builder,
        "preprocess": "caffe", "weights": NONE.identity, "image_size": SIZE, "tta": "flip", "images": "h"})
    n_calls = len(calls)
    assert extract_features(ds, out, settings(tta="flip", views=views), progress=False).cached
    assert len(calls) == n_calls
    assert not extract_features(ds, out, settings(tta="flip", views=("rot90",)), progress=False).cached


def test_an_interrupted_run_with_views_resumes_to_the_same_arrays(small_comp, tmp_path, monkeypatch):
    ds = discover(small_comp)
    views = ("zoom",)
    numpy_model(monkeypatch, [])
    clean = load_features(extract_features(ds, tmp_path / "clean", settings(tta="flip", views=views),
                                           progress=False).out_dir)
    calls: list = []
    numpy_model(monkeypatch, calls, stop_after=3 * 4)  # 3 batches of 4 views: shard 0 (8 rows) done, shard 1 not
    with pytest.raises(KeyboardInterrupt):
        extract_features(ds, tmp_path / "f", settings(tta="flip", views=views), progress=False)
    shard = next((tmp_path / "f" / ".partial").rglob("train-00000.npz"))
    with np.load(shard) as z:
        assert sorted(z.files) == ["feats", "flip", "ok", "widths", "zoom", "zoom_flip"]
    calls.clear()
    numpy_model(monkeypatch, calls)
    extract_features(ds, tmp_path / "f", settings(tta="flip", views=views), progress=False)
    assert sum(calls) == 4 * (26 - 8 + 2)  # every view of all but the finished shard (+2 rows of padding)
    resumed = load_features(tmp_path / "f")
    assert set(resumed.arrays) == set(clean.arrays) and len(resumed.arrays) == 8
    for logical in clean.arrays:
        np.testing.assert_allclose(resumed.arrays[logical], clean.arrays[logical], rtol=1e-6)


def test_the_cli_refuses_too_many_views_in_one_line(small_comp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["features", "--data", str(small_comp), "-b", "resnet50", "--weights", "none",
                                      "--views", "4", "--view-kind", "rotations"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].endswith(
        "--views 4 is out of range for --view-kind rotations: use 0 to 3 (rot90, rot180, rot270)")
    assert not (tmp_path / "experiments").exists()


# -------------------------------------------------------------------------------------------------------- cv
def test_cv_trains_on_and_averages_over_every_view_the_sets_share(small_comp, tmp_path, monkeypatch):
    import kaggle_kit.cv as cv_mod

    ds = discover(small_comp)
    exp = tmp_path / "experiments" / "default"
    rng = np.random.default_rng(0)
    signal = np.where(ds.y[:, None] == 1, 1.0, -1.0)

    def arrays(suffixes, width):
        out = {}
        for split, n in (("train", ds.n_train), ("test", ds.n_test)):
            for s in suffixes:
                base = signal if split == "train" else np.zeros((n, 1))
                out[f"{split}{'_' + s if s else ''}"] = (base + rng.normal(0, 1.5, (n, width))).astype(np.float32)
        return out

    write_feature_set(exp / "features" / "four", ds, arrays(["", "flip", "rot90", "rot90_flip"], 6),
                      backbone="synthetic", note="test")
    write_feature_set(exp / "features" / "two", ds, arrays(["", "flip"], 4), backbone="synthetic", note="test")
    from kaggle_kit.store import remember_data

    remember_data(exp, ds, metric="logloss")
    seen = {}
    real = cv_mod.cross_validate

    def spy(views, y, plan, test_views, **kw):
        seen.setdefault(views[0].shape[1], []).append(
            (len(views), len(test_views), kw["tta_train"], kw["tta_predict"]))
        return real(views, y, plan, test_views, **kw)

    monkeypatch.setattr(cv_mod, "cross_validate", spy)
    run = cv_mod.run_cv(exp, heads=["logreg", "concat"], n_folds=4, progress=False)
    assert seen[6] == [(4, 4, True, True)]  # 'four' alone: all four views
    assert seen[4] == [(2, 2, True, True)]  # 'two' alone
    assert seen[10] == [(2, 2, True, True)]  # side by side: the views both have (the image and its flip)
    assert {r.model for r in run.results} >= {"four__logreg", "two__logreg"}
