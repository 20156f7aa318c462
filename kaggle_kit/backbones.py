"""The backbone registry, and the only place that builds Keras models for feature extraction.

Each backbone carries its own input size, preprocessing and feature width: the pairing is part of the
contract (see ../shared/FACTS.md). The extractor built here takes **uint8 RGB** batches of shape
(batch, size, size, 3) and does the preprocessing inside the graph, so only bytes cross to the device.

Preprocessing modes (all take RGB 0-255):

- ``tf``:    x / 127.5 - 1                                     (Xception, InceptionV3, ResNet50V2, ...)
- ``caffe``: RGB -> BGR, minus the ImageNet mean [103.939, 116.779, 123.68]   (ResNet50/101/152, SqueezeNet)
- ``torch``: x / 255, minus [0.485, 0.456, 0.406], over [0.229, 0.224, 0.225]   (DenseNet)
- ``raw``:   x as float 0-255; the model normalises inside   (EfficientNet, EfficientNetV2, ConvNeXt)

Keras is imported inside functions only: ``kaggle-kit --help`` and the cache check never load TensorFlow.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kaggle_kit.artifacts import KitError, sha256_file

PREPROCESS_MODES = ("tf", "caffe", "torch", "raw")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    """A frozen ImageNet backbone without its top, global-average-pooled.

    ``builder`` is ``"module:callable"``. For ``keras.applications`` it is the application class; otherwise a
    kit function ``build(*, input_shape, weights, include_top=False) -> keras.Model`` taking preprocessed
    float input. ``keras_module`` names the keras.applications module whose ``preprocess_input`` the in-graph
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
]

REGISTRY: dict[str, Backbone] = {b.name: b for b in _ENTRIES}


def register(backbone: Backbone) -> Backbone:
    if backbone.preprocess not in PREPROCESS_MODES:
        raise ValueError(f"preprocess {backbone.preprocess!r} is not one of {PREPROCESS_MODES}")
    REGISTRY[backbone.name] = backbone
    return backbone


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
    import keras

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
    return getattr(importlib.import_module(module), attr)


def build_base(backbone: Backbone, *, image_size: int, weights: WeightsChoice, include_top: bool = False):
    """The backbone alone: preprocessed float input -> pooled features (or ImageNet logits with ``include_top``)."""
    import keras

    if image_size < backbone.min_size:
        raise KitError(f"--image-size {image_size} is too small for {backbone.name}; use at least {backbone.min_size}",
                       code=2)
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


def build_extractor(backbone: Backbone, *, image_size: int, weights: WeightsChoice,
                    layers: Sequence[str] | None = None):
    """uint8 RGB (batch, size, size, 3) -> float32 (batch, width): preprocessing in the graph, frozen.

    With ``layers`` (names from :func:`cut_layers`, any layer of the backbone with a feature map, or ``last``):
    one model with one output per name, in that order, each the global-average-pooled output of that layer,
    (batch, width of that layer); ``last`` is the default (batch, width) features. One forward pass computes all.
    """
    import keras

    base = build_base(backbone, image_size=image_size, weights=weights)
    base.trainable = False
    if layers is not None:
        if not layers:
            raise ValueError("layers must name at least one layer")
        by_name = _cuttable(base)
        outputs = []
        for i, name in enumerate(layers):
            if name == LAST:
                outputs.append(base.output)
            elif name in by_name:
                outputs.append(keras.layers.GlobalAveragePooling2D(name=f"pool_{i}")(by_name[name].output))
            else:
                valid = ", ".join([c.name for c in _cut_points(base, backbone)] + [LAST])
                raise KitError(f"unknown layer {name!r} of {backbone.name}; choose one of: {valid} (or any layer "
                               f"'kaggle-kit backbones --layers {backbone.name} --all' lists)", code=2)
        base = keras.Model(base.inputs, outputs, name=f"{backbone.name}_cut")
        base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="rgb_uint8")
    x = preprocess_layer(backbone.preprocess)(inputs)
    outputs = base(x, training=False)
    model = keras.Model(inputs, outputs, name=f"{backbone.name}_features")
    last = [i for i, name in enumerate(layers) if name == LAST] if layers is not None else [None]
    for i in last:
        width = (model.output_shape if i is None else model.output_shape[i])[-1]
        if width != backbone.width:
            raise KitError(f"{backbone.name} gives {width} features, registry says {backbone.width}")
    return model


# ------------------------------------------------------------------------------------- cutting at a layer
LAST = "last"  # the layer name that stands for the backbone's default (last-layer, pooled) features

# Where the graph's own names say more than the stage-end rule of _cut_points: every Inception module
# (mixed7 is the classic cut for cats and dogs), every SqueezeNet fire module, every EfficientNet-Lite stage.
CURATED_CUTS = {
    "inception_v3": tuple(f"mixed{i}" for i in range(10)),
    "squeezenet": tuple(f"fire{i}_concat" for i in range(2, 9)),
    **{name: tuple(f"block{i}" for i in range(1, 8))
       for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")},
}


@dataclass(frozen=True)
class CutLayer:
    """A layer features can be taken from: its name, its feature map's (height, width), its channel count."""

    name: str
    map_size: tuple[int, int]
    width: int


def _snake(class_name: str) -> str:
    """Keras's automatic layer-name prefix for a class (``BatchNormalization`` -> ``batch_normalization``)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _cuttable(base) -> dict:
    """Stable name -> layer (or operation) for every layer of ``base`` with a 4-D (batch, h, w, c) output.

    subtle: Keras numbers automatic names per process (``add``, ``add_1``, ... go on counting across models),
    so Xception's ``add_3`` would be ``add_15`` after another model was built. Automatically named layers are
    renumbered here in model order, which gives the names a fresh process (and the Keras docs) shows.
    """
    counts: dict[str, int] = {}
    named = {}
    for layer in base.operations:  # layers and the ops a model applies directly (ConvNeXt's 'x + y')
        prefix = _snake(type(layer).__name__)
        name = layer.name
        if re.fullmatch(rf"{re.escape(prefix)}(_\d+)?", name):
            n = counts.get(prefix, 0)
            counts[prefix] = n + 1
            name = prefix if n == 0 else f"{prefix}_{n}"
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            continue
        if len(shape) == 4:
            named[name] = layer
    return named


def _cut_points(base, backbone: Backbone) -> list[CutLayer]:
    """The layers worth cutting at, in model order: the curated names, else one stage end per stride.

    A cut is a layer through which every path from the input to the output passes (inside a residual block the
    skip bypasses every layer, so none of them is one). Cuts are grouped by their stride (2, 4, 8, ...: the
    input size over the map size, rounded to a power of two); a stage end is the last merge (Add, Concatenate)
    of a stride, or its first cut when it has none, followed on through the cuts of the same width (ResNet's
    ``_out`` activation, DenseNet's transition BN-ReLU), stopping before the next block widens the map.
    The layer whose pooled output is the default features is left out: ``last`` is it.
    """
    named = _cuttable(base)
    name_of = {id(layer): name for name, layer in named.items()}
    ops = base.operations
    order = {id(op): i for i, op in enumerate(ops)}
    # subtle: with the operations in a topological order, one is on every path exactly when no edge jumps over it.
    reach = [0] * len(ops)
    for op in ops:
        for node in op._inbound_nodes:
            for parent in node.parent_nodes:
                start = order[id(parent.operation)]
                if start >= order[id(op)]:
                    raise RuntimeError(f"{base.name}: operations are not in topological order")
                reach[start] = max(reach[start], order[id(op)])
    furthest, cut = 0, set()
    for i, op in enumerate(ops):
        if furthest <= i:
            cut.add(id(op))
        furthest = max(furthest, reach[i])
    final = ops[-1]
    pooled = {id(p.operation) for node in final._inbound_nodes for p in node.parent_nodes} \
        if type(final).__name__ == "GlobalAveragePooling2D" else set()
    if backbone.name in CURATED_CUTS:
        picks = [named[name] for name in CURATED_CUTS[backbone.name]]
    else:
        size = base.input.shape[1]
        by_stride: dict[int, list] = {}
        for op in ops:
            if id(op) in name_of and id(op) in cut and "Padding" not in type(op).__name__:
                stride = round(math.log2(size / op.output.shape[1]))
                if stride > 0:
                    by_stride.setdefault(stride, []).append(op)
        picks = []
        for stride, layers in sorted(by_stride.items()):
            merges = [i for i, layer in enumerate(layers) if type(layer).__name__ in ("Add", "Concatenate")]
            i = merges[-1] if merges else 0
            while i + 1 < len(layers) and layers[i + 1].output.shape[-1] == layers[i].output.shape[-1]:
                i += 1
            picks.append(layers[i])
    return [CutLayer(name_of[id(layer)], tuple(int(n) for n in layer.output.shape[1:3]), int(layer.output.shape[3]))
            for layer in picks if id(layer) not in pooled]


def cut_layers(backbone: Backbone, *, image_size: int | None = None, everything: bool = False) -> list[CutLayer]:
    """The layers of ``backbone`` worth cutting at (``everything``: every layer with a feature map), then ``last``
    (its default features; map size of the feature map it pools). Builds the graph with random weights."""
    size = image_size or backbone.input_size
    base = build_base(backbone, image_size=size, weights=WeightsChoice("none", None, "none"))
    named = _cuttable(base)
    if everything:
        cuts = [CutLayer(name, tuple(int(n) for n in layer.output.shape[1:3]), int(layer.output.shape[3]))
                for name, layer in named.items()]
    else:
        cuts = _cut_points(base, backbone)
    last_map = list(named.values())[-1].output.shape[1:3]
    return [*cuts, CutLayer(LAST, tuple(int(n) for n in last_map), int(base.output.shape[-1]))]


from kaggle_kit.ports import BACKBONES as _PORTS  # noqa: E402 - the kit's own ports register after the registry exists

for _b in _PORTS:
    register(_b)
