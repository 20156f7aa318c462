import importlib

import numpy as np
import pytest

from kaggle_kit.artifacts import KitError
from kaggle_kit.backbones import CURATED_CUTS, LAST, REGISTRY, Backbone, WeightsChoice, build_extractor, cut_layers, \
    get_backbone, preprocess_layer, resolve_weights

NONE = WeightsChoice("none", None, "none")
KERAS_APPS = sorted(b.name for b in REGISTRY.values() if b.is_keras_application)


def test_required_backbones_are_registered():
    required = {"xception", "inception_v3", "resnet50", "efficientnet_v2_b0", "efficientnet_v2_s",
                "efficientnet_v2_m", "efficientnet_v2_l", "convnext_tiny", "convnext_small", "convnext_base",
                "convnext_large"}
    assert required <= set(REGISTRY)
    assert get_backbone("xception").input_size == 299 and get_backbone("resnet50").preprocess == "caffe"


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(KitError) as info:
        get_backbone("resnet5")
    msg = str(info.value)
    assert "unknown backbone 'resnet5'" in msg and "resnet50" in msg and "xception" in msg
    assert info.value.code == 2


@pytest.mark.parametrize("name", KERAS_APPS)
def test_every_keras_backbone_builds_and_has_the_documented_width(name):
    import keras

    b = REGISTRY[name]
    size = max(b.min_size, 32)
    model = build_extractor(b, image_size=size, weights=NONE)
    assert model.input.dtype == "uint8"
    assert tuple(model.output_shape) == (None, b.width)
    keras.backend.clear_session()


def test_extractor_runs_on_a_uint8_batch():
    model = build_extractor(REGISTRY["mobilenet_v3_small"], image_size=32, weights=NONE)
    out = np.asarray(model.predict_on_batch(np.zeros((3, 32, 32, 3), np.uint8)))
    assert out.shape == (3, 576) and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("name", sorted({b.name for b in REGISTRY.values() if b.keras_module}))
def test_in_graph_preprocessing_equals_keras_preprocess_input(name):
    b = REGISTRY[name]
    x = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    ours = np.asarray(preprocess_layer(b.preprocess)(x))
    theirs = np.asarray(importlib.import_module(b.keras_module).preprocess_input(x.astype("float32").copy()))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_caffe_preprocessing_swaps_channels():
    x = np.zeros((1, 1, 1, 3), np.uint8)
    x[..., 0] = 200  # red
    out = np.asarray(preprocess_layer("caffe")(x))[0, 0, 0]
    np.testing.assert_allclose(out, [-103.939, -116.779, 200 - 123.68], rtol=1e-5)


def test_weights_resolution(tmp_path):
    b = REGISTRY["resnet50"]
    assert resolve_weights(b, "none").kind == "none"
    assert resolve_weights(b, "imagenet").identity.startswith("keras.applications ResNet50")
    f = tmp_path / "w.h5"
    f.write_bytes(b"not really weights")
    choice = resolve_weights(b, str(f))
    assert choice.kind == "file" and choice.identity.startswith("sha256:")
    with pytest.raises(KitError, match="neither 'imagenet', 'none' nor an existing file"):
        resolve_weights(b, str(tmp_path / "missing.h5"))
    with pytest.raises(KitError, match="cannot load --weights"):
        build_extractor(b, image_size=32, weights=choice)


def test_image_size_below_the_minimum_is_refused():
    with pytest.raises(KitError, match="at least 71"):
        build_extractor(REGISTRY["xception"], image_size=40, weights=NONE)


def test_backbone_is_frozen_config():
    b = REGISTRY["resnet50"]
    with pytest.raises(Exception):
        b.input_size = 1  # type: ignore[misc]
    assert isinstance(b, Backbone)


# ------------------------------------------------------------------------------------- cutting at a layer
def test_lite_cuts_are_the_seven_stage_ends_then_the_default_features():
    cuts = cut_layers(REGISTRY["efficientnet_lite0"], image_size=320)
    assert [c.name for c in cuts] == [f"block{i}" for i in range(1, 8)] + [LAST]
    assert [c.width for c in cuts] == [16, 24, 40, 80, 112, 192, 320, 1280]
    assert [c.map_size[0] for c in cuts] == [160, 80, 40, 20, 20, 10, 10, 10]  # strides 2 4 8 16 16 32 32


def test_inception_v3_lists_its_mixed_modules_and_cuts_at_mixed7():
    b = REGISTRY["inception_v3"]
    cuts = cut_layers(b, image_size=b.min_size)
    assert [c.name for c in cuts] == [f"mixed{i}" for i in range(10)] + [LAST]  # mixed10 pooled is 'last'
    assert [c.width for c in cuts] == [256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048]
    assert dict((c.name, c.width) for c in cuts)["mixed7"] == 768


def test_the_stage_end_rule_finds_resnet50_stages_and_stable_names_for_xception():
    assert [(c.name, c.map_size[0]) for c in cut_layers(REGISTRY["resnet50"], image_size=64)] == [
        ("conv1_relu", 32), ("conv2_block3_out", 16), ("conv3_block4_out", 8), ("conv4_block6_out", 4), (LAST, 2)]
    # Xception's merges have automatic names that Keras numbers per process: building it again (its adds now
    # called add_12, ...) must list the same names, and they must still be found when cutting.
    first = cut_layers(REGISTRY["xception"], image_size=71)
    second = cut_layers(REGISTRY["xception"], image_size=71)
    assert [c.name for c in first] == [c.name for c in second]
    assert [c.name for c in first][1:4] == ["add", "add_1", "add_10"]
    model = build_extractor(REGISTRY["xception"], image_size=71, weights=NONE, layers=["add_1", LAST])
    assert [shape[-1] for shape in model.output_shape] == [256, 2048]


def test_a_multi_layer_extractor_equals_single_layer_extractors():
    b = REGISTRY["inception_v3"]
    images = np.random.default_rng(0).integers(0, 256, size=(3, 75, 75, 3), dtype=np.uint8)
    multi = build_extractor(b, image_size=75, weights=NONE, layers=["mixed7", LAST, "mixed2"])
    assert multi.input.dtype == "uint8" and [s[-1] for s in multi.output_shape] == [768, 2048, 288]
    mixed7, last, mixed2 = (np.asarray(x) for x in multi.predict_on_batch(images))
    alone = np.asarray(build_extractor(b, image_size=75, weights=NONE, layers=["mixed7"]).predict_on_batch(images))
    default = np.asarray(build_extractor(b, image_size=75, weights=NONE).predict_on_batch(images))
    np.testing.assert_allclose(mixed7, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last, default, rtol=1e-5, atol=1e-6)
    assert mixed2.shape == (3, 288) and mixed7.std() > 0 and not np.allclose(mixed7[0], mixed7[1])


def test_an_unknown_layer_is_one_line_listing_the_cuts():
    with pytest.raises(KitError) as info:
        build_extractor(REGISTRY["efficientnet_lite0"], image_size=64, weights=NONE, layers=["block3", "block9"])
    msg = str(info.value)
    assert "\n" not in msg and info.value.code == 2
    assert "unknown layer 'block9' of efficientnet_lite0" in msg and "block7, last" in msg and "--layers" in msg


@pytest.mark.slow
@pytest.mark.parametrize("name", KERAS_APPS)
def test_every_keras_backbone_lists_stage_ends_that_cut(name):
    import keras

    b = REGISTRY[name]
    size = max(b.min_size, 64)
    cuts = cut_layers(b, image_size=size)
    assert len(cuts) >= 4 and cuts[-1].name == LAST and cuts[-1].width == b.width
    if name not in CURATED_CUTS:  # one stage end per stride, finer first
        assert all(a.map_size[0] > c.map_size[0] for a, c in zip(cuts[:-2], cuts[1:-1]))
    model = build_extractor(b, image_size=size, weights=NONE, layers=[c.name for c in cuts])
    assert [s[-1] for s in model.output_shape] == [c.width for c in cuts]
    keras.backend.clear_session()
