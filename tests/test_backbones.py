import dataclasses
import importlib

import numpy as np
import pytest

from conftest import intercept_keras_weights_requests
from kaggle_kit import backbones as backbones_module
from kaggle_kit import cam
from kaggle_kit.artifacts import KitError
from kaggle_kit.backbones import (
    CURATED_CUTS,
    LAST,
    REGISTRY,
    Backbone,
    WeightsChoice,
    build_base,
    build_extractor,
    build_feature_map,
    check_pool,
    cut_layers,
    cut_layers_of,
    extractor_on,
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
      linear head's class activation map averages to the head's logit for the photo;
    - the layers worth cutting at (``features --layer``), found on the same graph: at least four stage ends
      then 'last' (the default features), finer maps first where no curated list names them; an extractor of
      them all, on the same built backbone, gives each its listed width.
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

    cuts = cut_layers_of(net.base, b)
    assert len(cuts) >= 4 and cuts[-1].name == LAST and cuts[-1].width == b.width, cuts
    if name in CURATED_CUTS:
        assert [c.name for c in cuts[:-1]] == list(CURATED_CUTS[name])
    else:  # one stage end per stride, finer first
        assert all(a.map_size[0] > c.map_size[0] for a, c in zip(cuts[:-2], cuts[1:-1])), cuts
    cut = extractor_on(net.base, b, image_size=size, layers=[c.name for c in cuts])
    assert [int(output.shape[-1]) for output in cut.outputs] == [c.width for c in cuts]
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


# ------------------------------------------------------------------------------------- cutting at a layer
def test_lite_cuts_are_the_seven_stage_ends_their_expansions_then_the_default_features():
    cuts = cut_layers(REGISTRY["efficientnet_lite0"], image_size=320)
    narrow = [c for c in cuts if not c.name.endswith("x")]
    assert [c.name for c in narrow] == [f"block{i}" for i in range(1, 8)] + [LAST]
    assert [c.width for c in narrow] == [16, 24, 40, 80, 112, 192, 320, 1280]
    assert [c.map_size[0] for c in narrow] == [160, 80, 40, 20, 20, 10, 10, 10]  # strides 2 4 8 16 16 32 32
    # each stage end but the last, expanded 6x by the next block's 1x1 conv, in model order after its stage end
    assert [c.name for c in cuts] == ["block1", "block1x", "block2", "block2x", "block3", "block3x", "block4",
                                      "block4x", "block5", "block5x", "block6", "block6x", "block7", LAST]
    expanded = {c.name: c for c in cuts if c.name.endswith("x")}
    assert [expanded[f"block{i}x"].width for i in range(1, 7)] == [96, 144, 240, 480, 672, 1152]
    # the expansion belongs to the next stage's first block: same map as the stage end, but before its stride
    assert [expanded[f"block{i}x"].map_size[0] for i in range(1, 7)] == [160, 80, 40, 20, 20, 10]


def test_an_expanded_cut_is_the_next_blocks_expansion_output():
    """block5x is named for the cut; its features are exactly those of the Keras layer it follows (Lite0: the
    expansion ReLU6 of block 11, the first block of stage 6)."""
    from kaggle_kit.backbones import build_base, extractor_on

    b = REGISTRY["efficientnet_lite0"]
    base = build_base(b, image_size=64, weights=NONE)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    named = np.asarray(extractor_on(base, b, image_size=64, layers=["block5x"]).predict_on_batch(images))
    keras_name = np.asarray(extractor_on(base, b, image_size=64, layers=["blocks_11_bn0_relu6"]).predict_on_batch(
        images))
    np.testing.assert_array_equal(named, keras_name)
    assert named.shape == (2, 672) and named.std() > 0


@pytest.mark.slow  # builds InceptionV3
def test_inception_v3_lists_its_mixed_modules_and_cuts_at_mixed7():
    b = REGISTRY["inception_v3"]
    cuts = cut_layers(b, image_size=b.min_size)
    assert [c.name for c in cuts] == [f"mixed{i}" for i in range(10)] + [LAST]  # mixed10 pooled is 'last'
    assert [c.width for c in cuts] == [256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048]
    assert dict((c.name, c.width) for c in cuts)["mixed7"] == 768


@pytest.mark.slow  # builds ResNet50 once and Xception three times
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
    b = REGISTRY["efficientnet_lite0"]  # small, and built once: the extractors share its base
    base = build_base(b, image_size=64, weights=NONE)
    images = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    multi = extractor_on(base, b, image_size=64, layers=["block5", LAST, "block2"])
    assert multi.input.dtype == "uint8" and [s[-1] for s in multi.output_shape] == [112, 1280, 24]
    block5, last, block2 = (np.asarray(x) for x in multi.predict_on_batch(images))
    alone = np.asarray(extractor_on(base, b, image_size=64, layers=["block5"]).predict_on_batch(images))
    default = np.asarray(extractor_on(base, b, image_size=64).predict_on_batch(images))
    np.testing.assert_allclose(block5, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last, default, rtol=1e-5, atol=1e-6)
    assert block2.shape == (3, 24) and block5.std() > 0 and not np.allclose(block5[0], block5[1])


@pytest.mark.slow  # builds Keras models
def test_max_and_avgmax_pooling_are_the_maps_maximum_and_mean_per_channel():
    """--pool: each layer's map (and the last one, found before the backbone's own average pooling) is pooled by
    its maximum, or by its mean and maximum side by side; 'avg' stays the old extractor."""
    b = REGISTRY["efficientnet_lite0"]
    base = build_base(b, image_size=64, weights=NONE)
    images = np.random.default_rng(1).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    keras = load_keras()
    net = build_feature_map(b, image_size=64, weights=NONE)
    cuttable = backbones_module._cuttable(base)  # the maps themselves, through the same preprocessing
    trunk = keras.Model(base.inputs, [cuttable[name].output for name in ("block5", "block2")])
    inputs = keras.Input((64, 64, 3), dtype="uint8")
    block5, block2 = keras.Model(inputs, trunk(preprocess_layer(b.preprocess)(inputs))).predict_on_batch(images)
    maps = {"block5": np.asarray(block5), "block2": np.asarray(block2), LAST: net.predict(images)[0]}
    for pool, expect in (("max", lambda m: m.max(axis=(1, 2))),
                         ("avgmax", lambda m: np.concatenate([m.mean(axis=(1, 2)), m.max(axis=(1, 2))], axis=1))):
        model = extractor_on(base, b, image_size=64, layers=["block5", LAST, "block2"], pool=pool)
        assert [s[-1] for s in model.output_shape] == [w * (2 if pool == "avgmax" else 1) for w in (112, 1280, 24)]
        for got, name in zip(model.predict_on_batch(images), ("block5", LAST, "block2")):
            np.testing.assert_allclose(np.asarray(got), expect(maps[name]), rtol=1e-4, atol=1e-5)
    alone = np.asarray(extractor_on(base, b, image_size=64, pool="avgmax").predict_on_batch(images))  # last only
    assert alone.shape == (3, 2560)
    np.testing.assert_allclose(alone[:, :1280], np.asarray(extractor_on(base, b, image_size=64)
                                                           .predict_on_batch(images)), rtol=1e-5, atol=1e-6)
    mean, top = alone[:, :1280], alone[:, 1280:]
    assert (top >= mean * (1 - 1e-5)).all() and (top > 1.1 * mean).any()  # the max half is not the mean again


@pytest.mark.slow  # builds ConvNeXt
def test_convnext_pools_its_last_map_through_its_own_layer_norm():
    b = REGISTRY["convnext_tiny"]
    base = build_base(b, image_size=32, weights=NONE)
    images = np.random.default_rng(2).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    net = build_feature_map(b, image_size=32, weights=NONE)
    F, pooled = net.predict(images)
    gamma, beta, eps = net.layer_norm

    def norm(g):
        return (g - g.mean(1, keepdims=True)) / np.sqrt(g.var(1, keepdims=True) + eps) * gamma + beta

    got = np.asarray(extractor_on(base, b, image_size=32, pool="avgmax").predict_on_batch(images))
    np.testing.assert_allclose(got[:, :768], pooled, rtol=1e-4, atol=1e-4)  # the mean half: the default features
    np.testing.assert_allclose(got[:, 768:], norm(F.max(axis=(1, 2)).astype(np.float64)), rtol=1e-3, atol=1e-3)


def test_an_unknown_pool_is_one_line_before_anything_is_built(monkeypatch):
    from kaggle_kit import store

    assert check_pool("avgmax") == "avgmax" and store.DEFAULT_POOL == backbones_module.DEFAULT_POOL
    monkeypatch.setattr(backbones_module, "build_base", lambda *a, **kw: pytest.fail("built a model"))
    with pytest.raises(KitError, match=r"^--pool 'mean' is not one of: avg, max, avgmax$"):
        build_extractor(REGISTRY["efficientnet_lite0"], image_size=64, weights=NONE, pool="mean")


def test_an_unknown_layer_is_one_line_listing_the_cuts():
    with pytest.raises(KitError) as info:
        build_extractor(REGISTRY["efficientnet_lite0"], image_size=64, weights=NONE, layers=["block3", "block9"])
    msg = str(info.value)
    assert "\n" not in msg and info.value.code == 2
    assert "unknown layer 'block9' of efficientnet_lite0" in msg and "block7, last" in msg and "--layers" in msg
