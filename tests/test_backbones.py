import dataclasses
import importlib

import numpy as np
import pytest

from conftest import intercept_keras_weights_requests
from kaggle_kit import cam
from kaggle_kit.artifacts import KitError
from kaggle_kit.backbones import (
    REGISTRY,
    Backbone,
    WeightsChoice,
    build_extractor,
    build_feature_map,
    get_backbone,
    preprocess_layer,
    resolve_weights,
)
from kaggle_kit.keras_loader import load_keras
from kaggle_kit.weights import expected_file

NONE = WeightsChoice("none", None, "none")


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


@pytest.mark.slow  # builds every backbone, once each
@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square:UserWarning")  # MobileNets at 32 px
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_backbone_in_one_build_width_published_file_and_exact_cam(name, tmp_path, monkeypatch):
    """One build of each registered backbone (its feature-map model, at its smallest size, random weights):

    - the model takes uint8 photos, preprocesses them in its graph as keras.applications' own
      ``preprocess_input`` does, and gives the registry's width;
    - a Keras application is built as ``--weights imagenet`` builds it when no copy is found: the file and hash
      Keras then asks for are the ones :mod:`kaggle_kit.weights` tells users to attach (the request is
      intercepted and the loading skipped, so nothing is downloaded and the weights stay random);
    - the pooled features are the mean of the last feature map (through ConvNeXt's LayerNorm), so a random
      linear head's class activation map averages to the head's logit for the photo.
    """
    keras = load_keras()
    b = REGISTRY[name]
    size = max(b.min_size, 32)
    if b.is_keras_application:
        requests = intercept_keras_weights_requests(monkeypatch)
        weights = resolve_weights(b, "imagenet", image_size=size, environ={"KERAS_HOME": str(tmp_path)})
        assert weights.kind == "imagenet" and weights.path is None  # no copy here: Keras would download it
        keras.utils.set_random_seed(0)
    else:
        weights = NONE
    net = build_feature_map(b, image_size=size, weights=weights)
    if b.is_keras_application:
        entry = expected_file(name, image_size=size)
        traced = f'"{name}": _keras("{b.keras_module.rsplit(".", 1)[1]}", "{requests[0][0]}", {requests[0][1]!r})'
        assert requests == [(entry.name, entry.hash)], f"kaggle_kit.weights.KERAS_NOTOP should hold {traced}"
    assert net.model.input.dtype == "uint8"
    assert (net.layer_norm is not None) == name.startswith("convnext")

    photos = np.random.default_rng(5).integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    preprocessed = keras.Model(net.model.input, net.model.get_layer(f"preprocess_{b.preprocess}").output)(photos)
    if b.keras_module:
        theirs = importlib.import_module(b.keras_module).preprocess_input(photos.astype("float32"))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(preprocessed), theirs, rtol=1e-5, atol=1e-4)
    maps, pooled = net.predict(photos)
    assert maps.ndim == 4 and pooled.shape == (2, b.width) and pooled.dtype == np.float32
    rng = np.random.default_rng(6)
    w, bias = rng.normal(size=b.width) / np.sqrt(b.width), 0.3
    for F, g in zip(maps, pooled):
        wi, bi = w, bias
        if net.layer_norm is not None:
            gamma, beta, eps = net.layer_norm
            wi, bi = cam.fold_layer_norm(w, bias, pooled=F.mean(axis=(0, 1), dtype=np.float64), gamma=gamma,
                                         beta=beta, epsilon=eps)
        else:  # no LayerNorm: the features are the map's mean itself
            np.testing.assert_allclose(F.mean(axis=(0, 1), dtype=np.float64), g, rtol=1e-4,
                                       atol=1e-5 * max(1.0, float(np.abs(g).max())))
        logit = float(np.asarray(g, np.float64) @ w + bias)
        heat = cam.cam(F, wi, bi)
        assert heat.shape == F.shape[:2]
        assert heat.mean() == pytest.approx(logit, abs=1e-4 * max(1.0, abs(logit)))
    keras.backend.clear_session()


@pytest.mark.slow  # builds Keras models
def test_extractor_runs_on_a_uint8_batch():
    model = build_extractor(REGISTRY["mobilenet_v3_small"], image_size=32, weights=NONE)
    out = np.asarray(model.predict_on_batch(np.zeros((3, 32, 32, 3), np.uint8)))
    assert out.shape == (3, 576) and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.slow  # builds Keras models
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


@pytest.mark.slow  # builds a Keras model
def test_a_weights_file_that_does_not_fit_is_one_line(tmp_path):
    f = tmp_path / "w.h5"
    f.write_bytes(b"not really weights")
    with pytest.raises(KitError, match="cannot load --weights"):
        build_extractor(REGISTRY["resnet50"], image_size=32, weights=resolve_weights(REGISTRY["resnet50"], str(f)))


def test_image_size_below_the_minimum_is_refused():
    with pytest.raises(KitError, match="at least 71"):
        build_extractor(REGISTRY["xception"], image_size=40, weights=NONE)


def test_backbone_is_frozen_config():
    b = REGISTRY["resnet50"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.input_size = 1  # type: ignore[misc]
    assert isinstance(b, Backbone) and REGISTRY["resnet50"].input_size == 224
