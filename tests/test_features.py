import os

import numpy as np
import pytest

import kaggle_kit.backbones as backbones_mod
from kaggle_kit.artifacts import KitError
from kaggle_kit.backbones import REGISTRY, WeightsChoice, build_extractor
from kaggle_kit.data import discover
from kaggle_kit.features import FeatureSettings, extract_feature_sets, extract_features
from kaggle_kit.images import decode_image
from kaggle_kit.store import default_feature_set_name, load_features

SIZE = 32
NONE = WeightsChoice("none", None, "none (random init, seed 0)")


def settings(**kw):
    base = dict(backbone=REGISTRY["resnet50"], weights=NONE, image_size=SIZE, batch_size=4, shard_size=8)
    return FeatureSettings(**{**base, **kw})


class CountingExtractor:
    """Wraps the real extractor: counts images, and can raise Ctrl-C after ``stop_after`` batches."""

    def __init__(self, stop_after=None):
        self.images = 0
        self.batches = 0
        self.stop_after = stop_after

    def install(self, monkeypatch):
        real = build_extractor

        def build(*a, **kw):
            model = real(*a, **kw)
            outer = self

            class Wrapped:
                def predict_on_batch(self, x):
                    if outer.stop_after is not None and outer.batches >= outer.stop_after:
                        raise KeyboardInterrupt
                    outer.batches += 1
                    outer.images += len(x)
                    return model.predict_on_batch(x)

            return Wrapped()

        monkeypatch.setattr(backbones_mod, "build_extractor", build)
        return self


@pytest.mark.slow  # runs a Keras backbone over photos
def test_rows_follow_ids_and_last_partial_batch_is_included(small_comp, tmp_path):
    ds = discover(small_comp)  # 20 train, 6 test: batch 4 and shard 8 leave partial batches and shards
    res = extract_features(ds, tmp_path / "f", settings(tta="flip"), progress=False)
    fs = load_features(res.out_dir, image_list_hash=ds.image_list_hash())
    assert fs.arrays["train"].shape == (20, 2048) and fs.arrays["test"].shape == (6, 2048)
    assert fs.train_ids == ds.train_ids and fs.test_ids == ds.test_ids
    np.testing.assert_array_equal(fs.y, ds.y)
    model = build_extractor(REGISTRY["resnet50"], image_size=SIZE, weights=NONE)
    for split, files in (("train", ds.train_files), ("test", ds.test_files)):
        imgs = np.stack([decode_image(ds.root / f, SIZE) for f in files])
        np.testing.assert_allclose(fs.arrays[split], model.predict_on_batch(imgs), rtol=1e-4, atol=1e-4)
        flipped = np.ascontiguousarray(imgs[:, :, ::-1])
        np.testing.assert_allclose(fs.arrays[f"{split}_flip"], model.predict_on_batch(flipped), rtol=1e-4, atol=1e-4)
    assert not np.allclose(fs.arrays["train"], fs.arrays["train_flip"])
    m = res.features.manifest
    assert m["format"] == "kaggle-kit/features/1" and m["preprocess"] == "caffe" and m["input_size"] == SIZE
    assert m["images_per_second"] > 0 and m["unreadable"] == {"train": [], "test": []}
    assert m["decoder"] == "opencv" and fs.decoder == "opencv"


@pytest.mark.slow  # runs a Keras backbone over photos
def test_cache_reuse_and_invalidation(small_comp, tmp_path, monkeypatch):
    ds = discover(small_comp)
    out = tmp_path / "f"
    first = extract_features(ds, out, settings(), progress=False)
    assert not first.cached
    counter = CountingExtractor().install(monkeypatch)
    again = extract_features(discover(small_comp), out, settings(), progress=False)
    assert again.cached and counter.images == 0
    f = small_comp / "test" / "3.jpg"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed = extract_features(discover(small_comp), out, settings(), progress=False)
    assert not changed.cached and counter.images == 4 + 28  # warm-up batch, 26 images + 2 rows of padding
    other_size = extract_features(discover(small_comp), out, settings(image_size=40), progress=False)
    assert not other_size.cached and other_size.features.manifest["input_size"] == 40


@pytest.mark.slow  # runs a Keras backbone over photos
def test_resume_after_interruption_equals_a_clean_run(small_comp, tmp_path, monkeypatch):
    ds = discover(small_comp)
    clean = load_features(extract_features(ds, tmp_path / "clean", settings(), progress=False).out_dir)

    out = tmp_path / "resumed"
    CountingExtractor(stop_after=4).install(monkeypatch)  # warm-up + 12 images: shard 0 (8 rows) done, shard 1 not
    with pytest.raises(KeyboardInterrupt):
        extract_features(ds, out, settings(), progress=False)
    assert not (out / "manifest.json").exists() and not (out / "train.npy").exists()
    shards = sorted(p.name for p in (out / ".partial").rglob("*.npz"))
    assert shards == ["train-00000.npz"]
    with pytest.raises(KitError, match="run 'kaggle-kit features"):
        load_features(out)

    counter = CountingExtractor().install(monkeypatch)
    resumed = extract_features(ds, out, settings(), progress=False)
    assert not resumed.cached
    assert counter.images == 4 + 26 - 8 + 2  # warm-up, then all but the finished shard (+2 rows of padding)
    fs = load_features(out)
    for split in ("train", "test"):
        np.testing.assert_allclose(fs.arrays[split], clean.arrays[split], rtol=1e-4, atol=1e-4)
    assert not (out / ".partial").exists()


@pytest.mark.slow  # runs a Keras backbone over photos
def test_damaged_shard_is_recomputed_not_trusted(small_comp, tmp_path, monkeypatch):
    ds = discover(small_comp)
    out = tmp_path / "f"
    CountingExtractor(stop_after=4).install(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        extract_features(ds, out, settings(), progress=False)
    shard = next((out / ".partial").rglob("train-00000.npz"))
    shard.write_bytes(shard.read_bytes()[:100])
    counter = CountingExtractor().install(monkeypatch)
    extract_features(ds, out, settings(), progress=False)
    assert counter.images == 4 + 28  # warm-up, then everything recomputed: 26 rows + 2 padding


@pytest.mark.slow  # runs a Keras backbone over photos
def test_load_features_refuses_changed_images(small_comp, tmp_path):
    ds = discover(small_comp)
    res = extract_features(ds, tmp_path / "f", settings(), progress=False)
    with pytest.raises(KitError, match="other images than the data folder now holds; re-run 'kaggle-kit features "
                                       "--backbone resnet50 --image-size 32 --weights none --name f'$"):
        load_features(res.out_dir, image_list_hash="something else")


def test_write_feature_set_round_trips_and_checks_shapes(small_comp, tmp_path):
    ds = discover(small_comp)
    rng = np.random.default_rng(0)
    arrays = {"train": rng.standard_normal((20, 5)).astype(np.float32),
              "test": rng.standard_normal((6, 5)).astype(np.float32)}
    from kaggle_kit.features import write_feature_set

    written = write_feature_set(tmp_path / "ext", ds, arrays, backbone="external", note="made in a test")
    fs = load_features(tmp_path / "ext", image_list_hash=ds.image_list_hash())
    np.testing.assert_array_equal(fs.arrays["train"], arrays["train"])
    assert fs.key == written.key and fs.test_ids == ds.test_ids
    other = write_feature_set(tmp_path / "ext2", ds, {**arrays, "test": arrays["test"] + 1}, backbone="external",
                              note="made in a test")
    assert other.key != written.key  # the key follows the arrays' content
    with pytest.raises(KitError, match="has shape"):
        write_feature_set(tmp_path / "bad", ds, {**arrays, "test": arrays["test"][:5]}, backbone="x", note="y")


# ------------------------------------------------------------------------------------ several layers at once
LITE = REGISTRY["efficientnet_lite0"]
LITE_WEIGHTS = WeightsChoice("imagenet", None, "kaggle_kit efficientnet_lite0 imagenet (default file)")


def lite_settings(layer=None, **kw):
    base = dict(backbone=LITE, weights=LITE_WEIGHTS, image_size=64, batch_size=4, shard_size=8, tta="flip")
    return FeatureSettings(**{**base, **kw}, layer=layer)


class InterruptingModel:
    """The real multi-output extractor, with Ctrl-C after ``stop_after`` batches; counts images."""

    def __init__(self, model, counter):
        self.model, self.counter = model, counter

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict_on_batch(self, x):
        if self.counter["stop_after"] is not None and self.counter["batches"] >= self.counter["stop_after"]:
            raise KeyboardInterrupt
        self.counter["batches"] += 1
        self.counter["images"] += len(x)
        return self.model.predict_on_batch(x)


def install_counter(monkeypatch, stop_after=None) -> dict:
    counter = {"batches": 0, "images": 0, "stop_after": stop_after}
    real = build_extractor
    monkeypatch.setattr(backbones_mod, "build_extractor", lambda *a, **kw: InterruptingModel(real(*a, **kw), counter))
    return counter


@pytest.mark.slow  # runs a Keras backbone over photos
def test_layers_from_one_pass_equal_separate_extractions_and_are_named_apart(small_comp, tmp_path, monkeypatch):
    ds = discover(small_comp)
    layers = ["block3", "block5", None]
    names = [default_feature_set_name(LITE.name, input_size=LITE.input_size, image_size=64, layer=layer)
             for layer in layers]
    assert names == ["efficientnet_lite0_64-block3", "efficientnet_lite0_64-block5", "efficientnet_lite0_64"]
    counter = install_counter(monkeypatch)
    together = extract_feature_sets(ds, [(tmp_path / "one" / n, lite_settings(layer)) for n, layer in
                                         zip(names, layers)], progress=False)
    assert counter["images"] == 4 + 2 * 28  # warm-up, then each image (and its flip) through the model once
    monkeypatch.undo()
    for name, layer, result in zip(names, layers, together):
        assert not result.cached and result.features.layer == layer
        assert result.features.manifest["extracted_with"] == names
        alone = extract_features(ds, tmp_path / "apart" / name, lite_settings(layer), progress=False)
        a, b = (load_features(r.out_dir, image_list_hash=ds.image_list_hash()) for r in (result, alone))
        assert a.arrays["train"].shape == (20, {"block3": 40, "block5": 112, None: 1280}[layer])
        for logical in ("train", "test", "train_flip", "test_flip"):
            np.testing.assert_allclose(a.arrays[logical], b.arrays[logical], rtol=1e-5, atol=1e-6)
        assert a.arrays["train"].std() > 0 and not np.allclose(a.arrays["train"], a.arrays["train_flip"])
        assert alone.features.key == result.features.key  # the same feature set, however it was made
    assert together[2].features.key == lite_settings().key(ds.image_list_hash())  # 'last' keeps the old key
    assert "layer" not in together[2].features.manifest and together[0].features.manifest["layer"] == "block3"


@pytest.mark.slow  # runs a Keras backbone over photos
def test_only_the_missing_layers_are_computed_and_a_cached_set_builds_nothing(small_comp, tmp_path, monkeypatch):
    ds = discover(small_comp)
    out = tmp_path / "features"
    extract_features(ds, out / "b3", lite_settings("block3"), progress=False)
    counter = install_counter(monkeypatch)
    both = extract_feature_sets(ds, [(out / "b3", lite_settings("block3")), (out / "b6", lite_settings("block6"))],
                                progress=False)
    assert [r.cached for r in both] == [True, False] and both[1].features.width == 192
    assert both[1].features.manifest["extracted_with"] == ["b6"] and counter["images"] == 4 + 2 * 28

    def no_build(*a, **kw):
        raise AssertionError("a cached feature set must not build a model")

    monkeypatch.setattr(backbones_mod, "build_extractor", no_build)
    again = extract_feature_sets(ds, [(out / "b6", lite_settings("block6")), (out / "b3", lite_settings("block3"))],
                                 progress=False)
    assert [r.cached for r in again] == [True, True]


@pytest.mark.slow  # runs a Keras backbone over photos
def test_an_interrupted_multi_layer_run_resumes_from_its_shards(small_comp, tmp_path, monkeypatch):
    ds = discover(small_comp)
    jobs = [(tmp_path / name, lite_settings(layer)) for name, layer in (("b2", "block2"), ("last", None))]
    clean = extract_feature_sets(ds, [(tmp_path / "clean" / d.name, s) for d, s in jobs], progress=False)
    install_counter(monkeypatch, stop_after=7)  # warm-up + 3 batches (+ flips): shard 0 (8 rows) done
    with pytest.raises(KeyboardInterrupt):
        extract_feature_sets(ds, jobs, progress=False)
    assert sorted(p.name for p in (tmp_path / "b2" / ".partial").rglob("*.npz")) == ["train-00000.npz"]
    counter = install_counter(monkeypatch)
    resumed = extract_feature_sets(ds, jobs, progress=False)
    assert counter["images"] == 4 + 2 * (26 - 8 + 2)  # warm-up, then all but the finished shard (+2 padding)
    for done, reference in zip(resumed, clean):
        a, b = load_features(done.out_dir), load_features(reference.out_dir)
        for logical in a.arrays:
            np.testing.assert_allclose(a.arrays[logical], b.arrays[logical], rtol=1e-5, atol=1e-6)
    assert not any((tmp_path / name / ".partial").exists() for name in ("b2", "last"))


def test_an_unknown_layer_is_refused_before_anything_is_written(small_comp, tmp_path):
    ds = discover(small_comp)
    with pytest.raises(KitError) as info:
        extract_feature_sets(ds, [(tmp_path / "ok", lite_settings("block2")),
                                  (tmp_path / "bad", lite_settings("nope"))],
                             progress=False)
    assert "\n" not in str(info.value) and "unknown layer 'nope'" in str(info.value) and "block2" in str(info.value)
    assert not (tmp_path / "ok").exists() and not (tmp_path / "bad").exists()


def test_layer_sets_split_the_shards_columns_and_record_their_layer(small_comp, tmp_path, monkeypatch):
    """The engine's loop and the store's writers, without Keras: a NumPy 'model' whose two layers are the
    photo's channel means (3 wide) and its mean brightness and contrast (2 wide)."""
    import kaggle_kit.features as features_mod
    from kaggle_kit.engine import Predictor
    from kaggle_kit.store import features_command

    def predict(batch):
        x = batch.astype(np.float32)
        return np.concatenate([x.mean(axis=(1, 2)), np.stack([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3))], 1)], 1)

    built = []

    def fake_build(backbone, *, image_size, weights, batch_size, layers, pool):
        built.append(tuple(layers) + ((pool,) if pool != "avg" else ()))
        columns = {"means": slice(0, 3), "stats": slice(3, 5)}
        return Predictor(predict=lambda b: np.concatenate([predict(b)[:, columns[layer]] for layer in layers], 1),
                         widths=tuple(columns[layer].stop - columns[layer].start for layer in layers),
                         build_seconds=0.0, warmup_seconds=0.0, keras_backend="numpy", keras_version="-")

    monkeypatch.setattr(features_mod, "build_predictor", fake_build)
    ds = discover(small_comp)
    jobs = [(tmp_path / "experiments" / "default" / "features" / name, settings(layer=layer, tta="flip"))
            for name, layer in (("resnet50_32-means", "means"), ("resnet50_32-stats", "stats"))]
    means, stats = extract_feature_sets(ds, jobs, progress=False)
    assert built == [("means", "stats")]
    photos = np.stack([decode_image(p, SIZE) for p in ds.train_paths()])
    np.testing.assert_allclose(means.features.arrays["train"], predict(photos)[:, :3], rtol=1e-6)
    np.testing.assert_allclose(stats.features.arrays["train_flip"], predict(photos[:, :, ::-1])[:, 3:], rtol=1e-5)
    assert (means.features.layer, stats.features.layer, stats.features.width) == ("means", "stats", 2)
    assert means.features.key != stats.features.key != settings(tta="flip").key(ds.image_list_hash())
    assert "--layer stats" in features_command(stats.out_dir, stats.features.manifest)
    assert "--name" not in features_command(stats.out_dir, stats.features.manifest)  # the default name
    assert not any((d / ".partial").exists() for d, _ in jobs)
    again = extract_feature_sets(ds, jobs, progress=False)
    assert [r.cached for r in again] == [True, True] and len(built) == 1
    # --pool reaches the model, and the set records it: its own key, manifest field, name and re-run hint
    name = default_feature_set_name("resnet50", input_size=224, image_size=32, layer="stats", pool="avgmax")
    assert name == "resnet50_32-stats.avgmax"
    pooled = extract_feature_sets(ds, [(jobs[0][0].parent / name, settings(layer="stats", tta="flip", pool="avgmax"))],
                                  progress=False)[0]
    assert built[-1] == ("stats", "avgmax") and not pooled.cached
    assert pooled.features.pool == "avgmax" and pooled.features.manifest["pool"] == "avgmax"
    assert "pool" not in stats.features.manifest and stats.features.pool == "avg"  # sets made before --pool
    assert pooled.features.key != stats.features.key
    hint = features_command(pooled.out_dir, pooled.features.manifest)
    assert "--layer stats --pool avgmax" in hint and "--name" not in hint
    bare = features_command(pooled.out_dir)  # without a manifest, the folder's name says the same
    assert bare.endswith("--image-size 32 --layer stats --pool avgmax") and "--name" not in bare


@pytest.mark.slow  # runs a Keras backbone over photos
def test_the_cli_pools_by_mean_and_max_and_status_says_so(small_comp, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from kaggle_kit.cli import app
    from kaggle_kit.status import experiment_status, render_text

    monkeypatch.chdir(tmp_path)
    common = ["features", "--data", str(small_comp), "-b", "resnet50", "--weights", "none", "--image-size", "32", "-q"]
    bad = CliRunner().invoke(app, [*common, "--pool", "mean"])
    assert bad.exit_code == 2 and "'mean' is not one of" in bad.output and "'avgmax'" in bad.output
    assert not (tmp_path / "experiments").exists()
    plain = CliRunner().invoke(app, common)
    both = CliRunner().invoke(app, [*common, "--pool", "avgmax", "--layer", "conv3_block4_out", "--layer", "last"])
    assert plain.exit_code == 0 and both.exit_code == 0, both.output
    root = tmp_path / "experiments" / "default" / "features"
    assert sorted(p.name for p in root.iterdir()) == ["resnet50_32", "resnet50_32-conv3_block4_out.avgmax",
                                                      "resnet50_32.avgmax"]
    avg, avgmax = load_features(root / "resnet50_32"), load_features(root / "resnet50_32.avgmax")
    assert avgmax.width == 2 * avg.width == 4096
    assert load_features(root / "resnet50_32-conv3_block4_out.avgmax").width == 1024
    np.testing.assert_allclose(avgmax.arrays["train"][:, :2048], avg.arrays["train"], rtol=1e-5, atol=1e-6)
    assert (avgmax.arrays["train"][:, 2048:] >= avg.arrays["train"] * (1 - 1e-5)).all()
    text = " ".join(render_text(experiment_status(tmp_path / "experiments" / "default")))
    assert "layer conv3_block4_out, avgmax pooling" in text and text.count("avgmax pooling") == 2
