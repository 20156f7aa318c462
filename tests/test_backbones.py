import importlib

import numpy as np
import pytest

from kaggle_kit.artifacts import KitError
from kaggle_kit.backbones import REGISTRY, Backbone, WeightsChoice, build_extractor, get_backbone, preprocess_layer, \
    resolve_weights

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
    with pytest.raises(KitError, match="neither 'imagenet', 'none', an existing file nor a folder"):
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
