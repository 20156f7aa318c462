"""Augmented views at feature level: the deterministic transforms ``kaggle-kit features --views N`` applies to
each decoded image before the backbone sees it, and the names of the arrays they are cached in.

A feature set holds view 0 (the images as they are) and, with ``--tta flip``, their horizontal flips; ``--views
N`` adds N more views from one catalogue (``--view-kind``), each flipped too under ``--tta flip``:

- ``crops`` (photos; the default): crops of a larger resize. ``zoom`` is the central 87.5 % of the image
  brought back to full size (the ImageNet evaluation crop: resize to size / 0.875, central crop), then the four
  corner crops of the same size, then a closer central zoom (75 %). Six in all.
- ``rotations`` (cells, tissue, satellite tiles: images without an up): quarter turns ``rot90``, ``rot180``,
  ``rot270``. With ``--tta flip`` the eight views are the symmetries of the square (the dihedral group).

Views are made from the decoded (size, size) image, so every decoder gives them (OpenCV's and DALI's alike); a
crop is enlarged back with bilinear interpolation. ``cv`` trains its heads on every view of the training rows
and predicts the mean over every view, as it does for the flip alone (``cv.TTA_TRAIN``, ``cv.TTA_PREDICT``).

Array names: view ``v`` of ``split`` is ``<split>_<v>`` (``train_rot90``), its flip ``<split>_<v>_flip``; view 0
is ``<split>`` and its flip ``<split>_flip``, as in feature sets made before views existed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kaggle_kit.artifacts import KitError

# name -> (fraction of the side kept, centre row, centre column), centres as fractions of the side
_CROPS: dict[str, tuple[float, float, float]] = {
    "zoom": (0.875, 0.5, 0.5),
    "crop_tl": (0.875, 0.4375, 0.4375),
    "crop_br": (0.875, 0.5625, 0.5625),
    "crop_tr": (0.875, 0.4375, 0.5625),
    "crop_bl": (0.875, 0.5625, 0.4375),
    "zoom_in": (0.75, 0.5, 0.5),
}
_ROTATIONS: dict[str, int] = {"rot90": 1, "rot180": 2, "rot270": 3}  # quarter turns, counter-clockwise
CATALOGUES: dict[str, tuple[str, ...]] = {"crops": tuple(_CROPS), "rotations": tuple(_ROTATIONS)}
VIEW_KINDS = tuple(CATALOGUES)
DEFAULT_VIEW_KIND = "crops"


def view_names(n: int, kind: str = DEFAULT_VIEW_KIND) -> tuple[str, ...]:
    """The first ``n`` views of catalogue ``kind`` (see the module docstring); a one-line error when there are
    not that many."""
    if kind not in CATALOGUES:
        raise KitError(f"--view-kind {kind!r} is not one of: {', '.join(VIEW_KINDS)}", code=2)
    names = CATALOGUES[kind]
    if not 0 <= n <= len(names):
        raise KitError(f"--views {n} is out of range for --view-kind {kind}: use 0 to {len(names)} "
                       f"({', '.join(names)})", code=2)
    return names[:n]


def views_options(views: Sequence[str]) -> tuple[int, str]:
    """``(N, kind)`` such that ``view_names(N, kind)`` gives ``views`` back (the options that made them)."""
    for kind, names in CATALOGUES.items():
        if tuple(views) == names[:len(views)]:
            return len(views), kind
    raise KitError(f"views {list(views)} are not the first views of any --view-kind ({', '.join(VIEW_KINDS)})")


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """``views`` as a tuple, refused (one line) when a name is unknown or repeated."""
    known = {name for names in CATALOGUES.values() for name in names}
    unknown = [v for v in views if v not in known]
    if unknown or len(set(views)) != len(views):
        raise KitError(f"views must be distinct names from {sorted(known)}, got {list(views)}", code=2)
    return tuple(views)


def view_suffixes(flip: bool, views: Sequence[str] = ()) -> list[str]:
    """Every view of a feature set as the suffix of its array names, in cv's order: '' (the images), 'flip',
    then each of ``views`` and (with ``flip``) its flip: ``['', 'flip', 'rot90', 'rot90_flip', ...]``."""
    out = [""] + (["flip"] if flip else [])
    for v in views:
        out += [v] + ([f"{v}_flip"] if flip else [])
    return out


def array_name(split: str, suffix: str) -> str:
    """``train`` + ``rot90_flip`` -> ``train_rot90_flip`` (the logical array, and its file's stem)."""
    return f"{split}_{suffix}" if suffix else split


def apply_view(batch: np.ndarray, name: str) -> np.ndarray:
    """View ``name`` of a uint8 batch (b, s, s, 3): same shape and dtype, C-contiguous. Deterministic."""
    import cv2

    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[1] != batch.shape[2]:
        raise ValueError(f"views need square images (b, s, s, c), got shape {batch.shape}")
    if name in _ROTATIONS:
        return np.ascontiguousarray(np.rot90(batch, _ROTATIONS[name], axes=(1, 2)))
    if name not in _CROPS:
        raise KitError(f"unknown view {name!r}; views are: {', '.join(n for c in CATALOGUES.values() for n in c)}")
    keep, cy, cx = _CROPS[name]
    s = batch.shape[1]
    side = max(1, int(round(s * keep)))
    top = int(round(cy * s - side / 2))
    left = int(round(cx * s - side / 2))
    top, left = min(max(top, 0), s - side), min(max(left, 0), s - side)
    out = np.empty_like(batch)
    for i, image in enumerate(batch):
        crop = np.ascontiguousarray(image[top:top + side, left:left + side])
        resized = cv2.resize(crop, (s, s), interpolation=cv2.INTER_LINEAR)
        out[i] = resized.reshape(out[i].shape)
    return out


def flipped(batch: np.ndarray) -> np.ndarray:
    """The horizontal flip of a batch (b, s, s, c), C-contiguous."""
    return np.ascontiguousarray(np.asarray(batch)[:, :, ::-1])
