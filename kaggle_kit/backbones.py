"""The backbone registry, and the only place that builds Keras models for feature extraction.

Each backbone carries its own input size, preprocessing and feature width: the pairing is part of the
contract (see ../shared/FACTS.md). The extractor built here takes **uint8 RGB** batches of shape
(batch, size, size, 3) and does the preprocessing inside the graph, so only bytes cross to the device.

Preprocessing modes (all take RGB 0-255):

- ``tf``:    x / 127.5 - 1                                     (Xception, InceptionV3, ResNet50V2, ...)
- ``caffe``: RGB -> BGR, minus the ImageNet mean [103.939, 116.779, 123.68]   (ResNet50/101/152, SqueezeNet)
- ``torch``: x / 255, minus [0.485, 0.456, 0.406], over [0.229, 0.224, 0.225]   (DenseNet)
- ``raw``:   x as float 0-255; the model normalises inside   (EfficientNet, EfficientNetV2, ConvNeXt)

Keras is imported inside functions only (through :mod:`kaggle_kit.keras_loader`): ``kaggle-kit --help`` and the
cache check never load TensorFlow. The kit's own ports (:mod:`kaggle_kit.ports`) are ordinary entries whose
builder names a function there, imported only when the model is built.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

from kaggle_kit.artifacts import KitError, sha256_file
from kaggle_kit.keras_loader import load_keras

PREPROCESS_MODES = ("tf", "caffe", "torch", "raw")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    """A frozen ImageNet backbone without its top, global-average-pooled.

    ``builder`` is ``"module:callable"``, imported when the model is built. For ``keras.applications`` it is the
    application class; otherwise a kit function ``build(*, input_shape, weights, include_top=False) ->
    keras.Model`` taking preprocessed float input (``kaggle_kit.ports:build_squeezenet``). ``keras_module`` names
    the keras.applications module whose ``preprocess_input`` the in-graph
    preprocessing must equal (None for the kit's own ports).
    """

    name: str
    input_size: int
    preprocess: str
    width: int
    builder: str
    keras_module: str | None = None
    min_size: int = 32
    default_weights: str = "imagenet"

    @property
    def is_keras_application(self) -> bool:
        return self.builder.startswith("keras.applications:")


def _app(name, size, mode, width, cls, module, min_size=32):
    return Backbone(name, size, mode, width, f"keras.applications:{cls}", f"keras.applications.{module}", min_size)


def _port(name, size, mode, width, builder, min_size=32):
    """A backbone written in the kit: ``builder`` is a function of :mod:`kaggle_kit.ports`."""
    return Backbone(name, size, mode, width, f"kaggle_kit.ports:{builder}", None, min_size)


_ENTRIES = [
    _app("xception", 299, "tf", 2048, "Xception", "xception", 71),
    _app("inception_v3", 299, "tf", 2048, "InceptionV3", "inception_v3", 75),
    _app("resnet50", 224, "caffe", 2048, "ResNet50", "resnet50"),
    _app("resnet101", 224, "caffe", 2048, "ResNet101", "resnet"),
    _app("resnet152", 224, "caffe", 2048, "ResNet152", "resnet"),
    _app("resnet50_v2", 224, "tf", 2048, "ResNet50V2", "resnet_v2"),
    _app("resnet152_v2", 224, "tf", 2048, "ResNet152V2", "resnet_v2"),
    _app("inception_resnet_v2", 299, "tf", 1536, "InceptionResNetV2", "inception_resnet_v2", 75),
    _app("densenet201", 224, "torch", 1920, "DenseNet201", "densenet"),
    _app("efficientnet_b0", 224, "raw", 1280, "EfficientNetB0", "efficientnet"),
    _app("efficientnet_b3", 300, "raw", 1536, "EfficientNetB3", "efficientnet"),
    _app("efficientnet_b5", 456, "raw", 2048, "EfficientNetB5", "efficientnet"),
    _app("efficientnet_b7", 600, "raw", 2560, "EfficientNetB7", "efficientnet"),
    _app("efficientnet_v2_b0", 224, "raw", 1280, "EfficientNetV2B0", "efficientnet_v2"),
    _app("efficientnet_v2_b3", 300, "raw", 1536, "EfficientNetV2B3", "efficientnet_v2"),
    _app("efficientnet_v2_s", 384, "raw", 1280, "EfficientNetV2S", "efficientnet_v2"),
    _app("efficientnet_v2_m", 480, "raw", 1280, "EfficientNetV2M", "efficientnet_v2"),
    _app("efficientnet_v2_l", 480, "raw", 1280, "EfficientNetV2L", "efficientnet_v2"),
    _app("mobilenet_v2", 224, "tf", 1280, "MobileNetV2", "mobilenet_v2"),
    _app("mobilenet_v3_small", 224, "raw", 576, "MobileNetV3Small", "mobilenet_v3"),
    _app("mobilenet_v3_large", 224, "raw", 960, "MobileNetV3Large", "mobilenet_v3"),
    _app("convnext_tiny", 224, "raw", 768, "ConvNeXtTiny", "convnext"),
    _app("convnext_small", 224, "raw", 768, "ConvNeXtSmall", "convnext"),
    _app("convnext_base", 224, "raw", 1024, "ConvNeXtBase", "convnext"),
    _app("convnext_large", 224, "raw", 1536, "ConvNeXtLarge", "convnext"),
    _app("convnext_xlarge", 224, "raw", 2048, "ConvNeXtXLarge", "convnext"),
    # The kit's own ports, with real ImageNet weights that work offline (kaggle_kit/ports.py).
    # SqueezeNet: 17 px is the smallest input that survives conv1 and the three ceil-mode pools: 17 -> 8 -> 4 -> 2 -> 1.
    _port("squeezenet", 227, "caffe", 512, "build_squeezenet", 17),
    # EfficientNet-Lite0: 'tf' (x / 127.5 - 1): the TensorFlow lite checkpoints these weights were converted from
    # were trained on (x - 127) / 128, which 'tf' matches to 0.4 %; ImageNet mean/std ('torch') is a different
    # input. Measured on 100 photos: the stem's batch-norm input means fit its running means 10x closer with 'tf'
    # (0.015 vs 0.146 standard deviations), and 86 vs 82 photos get an ImageNet class of the right family.
    # Features are taken at 320 px, not the 224 px it was trained at: trained on random-resized crops, the
    # network saw objects larger than a whole photo squashed to 224 shows them, and a higher test resolution
    # makes up for it (Touvron et al. 2019, "Fixing the train-test resolution discrepancy"). Measured on
    # dogs-vs-cats-mini (flip TTA, logreg head, OOF log loss, 5 folds x 3 repeats, seed 1): 224 px 0.0296,
    # 256 0.0231, 288 0.0228, 320 0.0200, 384 0.0221. SqueezeNet does not gain (227 px 0.0885, 320 0.0952).
    _port("efficientnet_lite0", 320, "tf", 1280, "build_efficientnet_lite0"),
]

REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    if backbone.preprocess not in PREPROCESS_MODES:
        raise ValueError(f"preprocess {backbone.preprocess!r} is not one of {PREPROCESS_MODES}")
    if ":" not in backbone.builder:
        raise ValueError(f"builder {backbone.builder!r} must be 'module:callable'")
    REGISTRY[backbone.name] = backbone
    return backbone


for _entry in _ENTRIES:
    register(_entry)


def get_backbone(name: str) -> Backbone:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KitError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(REGISTRY))}", code=2) from None


# ------------------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class WeightsChoice:
    """What ``--weights`` resolved to: ``kind`` is 'imagenet', 'file' or 'none'; ``identity`` goes in manifests."""

    kind: str
    path: Path | None
    identity: str


def resolve_weights(backbone: Backbone, weights: str) -> WeightsChoice:
    """Turn ``--weights imagenet|none|PATH`` into a :class:`WeightsChoice` (hashing a local file)."""
    if weights.lower() == "none":
        return WeightsChoice("none", None, "none (random init, seed 0)")
    if weights.lower() == "imagenet":
        if backbone.is_keras_application:
            return WeightsChoice("imagenet", None, f"keras.applications {backbone.builder.split(':')[1]} imagenet")
        return WeightsChoice("imagenet", None, f"kaggle_kit {backbone.name} imagenet (default file)")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise KitError(f"--weights {weights!r} is neither 'imagenet', 'none' nor an existing file", code=2)
    return WeightsChoice("file", path.resolve(), f"sha256:{sha256_file(path)}")


# ------------------------------------------------------------------------------------------------ building
@functools.cache
def _preprocess_layer_class():
    keras = load_keras()

    class Preprocess(keras.layers.Layer):
        """uint8/float RGB 0-255 -> the backbone's float input, inside the graph (runs on the device)."""

        def __init__(self, mode: str, **kwargs):
            super().__init__(**kwargs)
            if mode not in PREPROCESS_MODES:
                raise ValueError(f"unknown preprocessing mode {mode!r}")
            self.mode = mode

        def call(self, x):
            ops = keras.ops
            x = ops.cast(x, "float32")
            if self.mode == "tf":
                return x / 127.5 - 1.0
            if self.mode == "caffe":
                x = ops.flip(x, axis=-1)  # RGB -> BGR
                return x - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype="float32")
            if self.mode == "torch":
                mean = ops.convert_to_tensor(TORCH_MEAN_RGB, dtype="float32")
                std = ops.convert_to_tensor(TORCH_STD_RGB, dtype="float32")
                return (x / 255.0 - mean) / std
            return x

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    return Preprocess


def preprocess_layer(mode: str):
    return _preprocess_layer_class()(mode, name=f"preprocess_{mode}")


def _import(spec: str):
    module, attr = spec.split(":")
    if module.split(".")[0] == "keras":
        load_keras()  # quietly, before importlib does it
    return getattr(importlib.import_module(module), attr)


def build_base(backbone: Backbone, *, image_size: int, weights: WeightsChoice, include_top: bool = False):
    """The backbone alone: preprocessed float input -> pooled features (or ImageNet logits with ``include_top``)."""
    if image_size < backbone.min_size:  # refused before TensorFlow is even loaded
        raise KitError(f"--image-size {image_size} is too small for {backbone.name}; use at least {backbone.min_size}",
                       code=2)
    keras = load_keras()
    if weights.kind == "none":
        keras.utils.set_random_seed(0)  # random features must be reproducible, or a resumed run would mix models
    shape = (image_size, image_size, 3)
    if not backbone.is_keras_application:
        return _import(backbone.builder)(input_shape=shape, weights=weights, include_top=include_top)
    cls = _import(backbone.builder)
    kw = dict(include_top=False, input_shape=shape, pooling="avg")
    if include_top:
        kw = dict(include_top=True, input_shape=shape, classifier_activation=None)
    try:
        if weights.kind == "none":
            return cls(weights=None, **kw)
        if weights.kind == "file":
            return cls(weights=str(weights.path), **kw)
        return cls(weights="imagenet", **kw)
    except Exception as exc:  # noqa: BLE001 - keras raises a bare Exception when a download fails
        if weights.kind == "imagenet":
            raise KitError(
                f"could not get the ImageNet weights of {backbone.name} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); with no internet, copy Keras's '*_notop.h5' "
                f"file for {cls.__name__} from a machine that has it and pass --weights PATH"
            ) from None
        if weights.kind == "file":
            raise KitError(
                f"cannot load --weights {weights.path} into {backbone.name} at {image_size}px "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); it must be a Keras "
                f"weights file for {cls.__name__} without its top"
            ) from None
        raise KitError(f"cannot build {backbone.name} at {image_size}px: {exc}", code=2) from None


def build_extractor(backbone: Backbone, *, image_size: int, weights: WeightsChoice):
    """uint8 RGB (batch, size, size, 3) -> float32 (batch, width): preprocessing in the graph, frozen."""
    base = build_base(backbone, image_size=image_size, weights=weights)  # (checks the size before loading Keras)
    keras = load_keras()
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="rgb_uint8")
    x = preprocess_layer(backbone.preprocess)(inputs)
    outputs = base(x, training=False)
    model = keras.Model(inputs, outputs, name=f"{backbone.name}_features")
    if model.output_shape[-1] != backbone.width:
        raise KitError(f"{backbone.name} gives {model.output_shape[-1]} features, registry says {backbone.width}")
    return model

