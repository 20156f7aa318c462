"""Stage 1: frozen-backbone bottleneck features for every training and test image, cached and resumable.

:func:`run_features` (``kaggle-kit features``) resolves the data folder, the backbone and its weights, holds the
experiment's lock and extracts a feature set (its files and manifest: :mod:`kaggle_kit.store`): 'train' and
'test' float32 (n_train, width) and (n_test, width) in the data set's fixed row order; with ``--tta flip``
also 'train_flip' and 'test_flip', the same rows computed on horizontally flipped images. Later stages use
them as a second view of each image: ``cv`` can train heads on both views (augmentation) and average a model's
predictions over both views (test-time augmentation).

Extraction is written in shards (``.partial/<key>/<split>-<i>.npz``, each written atomically). A run that is
interrupted (Ctrl-C, SIGKILL) resumes from the finished shards of the same key; the key is a hash of
everything the features depend on, so shards of another configuration or of changed images are never reused.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kaggle_kit.artifacts import KitError, atomic_path, check_name, experiment_lock, sha256_array, sha256_json
from kaggle_kit.backbones import Backbone, WeightsChoice
from kaggle_kit.data import Dataset
from kaggle_kit.store import (
    EXTERNAL_WEIGHTS,
    FEATURES_FORMAT,
    FeatureSet,
    begin_feature_set,
    cached_feature_set,
    default_feature_set_name,
    experiment_data,
    feature_array_path,
    features_dir,
    finish_feature_set,
    partial_dir,
    save_experiment,
    save_feature_set,
)

TTA_MODES = ("none", "flip")
DEFAULT_BACKBONE = "xception"  # the classic recipe's best single backbone


@dataclass(frozen=True)
class FeatureSettings:
    """Everything a feature set depends on, plus how to compute it (batch, workers, shards do not change it)."""

    backbone: Backbone
    weights: WeightsChoice
    image_size: int
    tta: str = "none"
    batch_size: int = 32
    workers: int | None = None
    shard_size: int = 1024

    def key(self, image_list_hash: str) -> str:
        return sha256_json({
            "format": FEATURES_FORMAT,
            "backbone": self.backbone.name,
            "builder": self.backbone.builder,
            "preprocess": self.backbone.preprocess,
            "weights": self.weights.identity,
            "image_size": self.image_size,
            "tta": self.tta,
            "images": image_list_hash,
        })


@dataclass(frozen=True)
class FeatureResult:
    """A finished feature set and whether it was reused from the cache."""

    features: FeatureSet
    cached: bool

    @property
    def out_dir(self) -> Path:
        return self.features.path

    def lines(self) -> list[str]:
        """What ``kaggle-kit features`` prints: one line of rows, width and speed (or 'cached')."""
        fs = self.features
        if self.cached:
            return [f"{fs.name}: cached ({fs.n_train} train + {fs.n_test} test rows, {fs.width} features) "
                    f"in {self.out_dir}; --force recomputes"]
        rate = fs.images_per_second
        return [f"{fs.name}: {fs.n_train} train + {fs.n_test} test images -> {fs.width} features"
                f"{' x2 (flip)' if fs.tta == 'flip' else ''}, {rate if rate is not None else '-'} img/s end to end, "
                f"{fs.extract_seconds} s -> {self.out_dir}"]


# ------------------------------------------------------------------------------------------------ the engine
def _shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


def _shard_path(partial: Path, split: str, index: int) -> Path:
    return partial / f"{split}-{index:05d}.npz"


def _load_shard(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged shard is recomputed, never trusted


def _shard_is_complete(path: Path, rows: int) -> bool:
    """True when the shard exists, opens, and holds ``rows`` rows (reads only its small 'ok' array)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "feats" in z.files and z["ok"].shape == (rows,)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def pending_shards(paths: dict[str, list[Path]], partial: Path, *, shard_size: int) -> list[tuple[str, int, int, int]]:
    """The (split, shard index, first row, end row) of every shard not yet finished, in extraction order."""
    return [
        (split, index, a, b)
        for split, split_paths in paths.items()
        for index, (a, b) in enumerate(_shard_ranges(len(split_paths), shard_size))
        if not _shard_is_complete(_shard_path(partial, split, index), b - a)
    ]


def _save_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def run_extraction(
    predict: Callable[[np.ndarray], np.ndarray],
    paths: dict[str, list[Path]],
    partial: Path,
    todo: list[tuple[str, int, int, int]],
    *,
    width: int,
    image_size: int,
    batch_size: int,
    tta: str,
    workers: int | None,
    on_images: Callable[[int], None] = lambda n: None,
) -> int:
    """Compute the shards listed in ``todo`` (see :func:`pending_shards`); return how many images were decoded.

    ``predict`` maps uint8 (batch_size, s, s, 3) to float (batch_size, width); the last batch is padded to
    ``batch_size`` (so a compiled function never retraces) and the padding rows dropped.
    """
    from kaggle_kit.images import iter_batches

    flat = [p for split, _, a, b in todo for p in paths[split][a:b]]
    if not flat:
        return 0

    buffers: dict[str, list[np.ndarray]] = {"feats": [], "ok": [], "flip": []}
    unit = 0  # index into todo of the shard being filled
    filled = 0

    def flush():
        nonlocal unit, filled
        split, index, a, b = todo[unit]
        arrays = {"feats": np.concatenate(buffers["feats"])[: b - a], "ok": np.concatenate(buffers["ok"])[: b - a]}
        if tta == "flip":
            arrays["flip"] = np.concatenate(buffers["flip"])[: b - a]
        _save_shard(_shard_path(partial, split, index), arrays)
        unit, filled = unit + 1, 0
        for v in buffers.values():
            v.clear()

    def padded(batch: np.ndarray) -> np.ndarray:
        if len(batch) == batch_size:
            return batch
        pad = np.zeros((batch_size - len(batch), *batch.shape[1:]), dtype=batch.dtype)
        return np.concatenate([batch, pad])

    for batch, ok in iter_batches(flat, size=image_size, batch_size=batch_size, workers=workers):
        n = len(batch)
        feats = np.asarray(predict(padded(batch)), dtype=np.float32)[:n]
        flip = None
        if tta == "flip":
            flip = np.asarray(predict(padded(np.ascontiguousarray(batch[:, :, ::-1]))), dtype=np.float32)[:n]
        if feats.shape != (n, width):
            raise KitError(f"the model returned features of shape {feats.shape[1:]}, expected ({width},)")
        # A batch may straddle shard boundaries: hand its rows to the shards in order.
        start = 0
        while start < n:
            split, index, a, b = todo[unit]
            take = min(n - start, (b - a) - filled)
            buffers["feats"].append(feats[start:start + take])
            buffers["ok"].append(ok[start:start + take])
            if flip is not None:
                buffers["flip"].append(flip[start:start + take])
            filled += take
            start += take
            if filled == b - a:
                flush()
        on_images(n)
    return len(flat)


def _assemble(out_dir: Path, partial: Path, paths: dict[str, list[Path]], *, width: int, shard_size: int,
              tta: str) -> dict[str, np.ndarray]:
    """Stream the shards into the final arrays (memory-mapped, atomic); return the ok mask of each split.

    Each shard is read once; peak memory is one shard, whatever the number of images.
    """
    ok_masks = {}
    for split, split_paths in paths.items():
        sources = {"feats": split, **({"flip": f"{split}_flip"} if tta == "flip" else {})}
        n = len(split_paths)
        with contextlib.ExitStack() as stack:
            outs = {}
            for key, logical in sources.items():
                tmp = stack.enter_context(atomic_path(feature_array_path(out_dir, logical), suffix=".npy"))
                outs[key] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, width))
            ok = np.zeros(n, dtype=bool)
            for index, (a, b) in enumerate(_shard_ranges(n, shard_size)):
                shard = _load_shard(_shard_path(partial, split, index))
                if shard is None:
                    raise KitError(f"shard {split}-{index} in {partial} vanished while assembling; run again")
                for key, out in outs.items():
                    out[a:b] = shard[key]
                ok[a:b] = shard["ok"]
            for out in outs.values():
                out.flush()
            outs.clear()  # subtle: close the memory maps before atomic_path renames the files
        ok_masks[split] = ok
    return ok_masks


def write_feature_set(out_dir: Path, dataset: Dataset, arrays: dict[str, np.ndarray], *, backbone: str,
                      note: str) -> FeatureSet:
    """Save features computed elsewhere as a finished feature set that every later stage accepts.

    ``arrays``: 'train' (n_train, width) and 'test' (n_test, width), optionally 'train_flip'/'test_flip', rows
    in ``dataset``'s order. ``note`` says where they come from (it stands in the manifest as their weights).
    Used by benchmarks and tests, and for features made by another tool.
    """
    image_hash = dataset.image_list_hash()
    key = sha256_json({"format": FEATURES_FORMAT, "backbone": backbone, "weights": note, "images": image_hash,
                       "arrays": {k: sha256_array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}})
    return save_feature_set(out_dir, dataset, arrays, key=key, image_list_hash=image_hash, backbone=backbone,
                            weights=note, weights_kind=EXTERNAL_WEIGHTS)


def extract_features(
    dataset: Dataset,
    out_dir: Path,
    settings: FeatureSettings,
    *,
    force: bool = False,
    warn: Callable[[str], None] = print,
    progress: bool = True,
) -> FeatureResult:
    """Extract (or reuse) the features of ``dataset`` into ``out_dir``; see the module docstring for the layout."""
    image_hash = dataset.image_list_hash()
    key = settings.key(image_hash)
    if not force and (cached := cached_feature_set(out_dir, key)) is not None:
        return FeatureResult(cached, cached=True)

    partial = partial_dir(out_dir) / key[:16]
    if force and partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.parent.iterdir():  # shards of other configurations can never be used again
        if stale != partial:
            shutil.rmtree(stale, ignore_errors=True)
    for stale in out_dir.glob(".*.tmp"):  # arrays of a run killed while assembling (as large as the results)
        stale.unlink(missing_ok=True)

    paths = {"train": dataset.train_paths(), "test": dataset.test_paths()}
    total = sum(len(p) for p in paths.values())
    backbone = settings.backbone
    t_build = time.perf_counter()
    from kaggle_kit.backbones import build_extractor

    model = build_extractor(backbone, image_size=settings.image_size, weights=settings.weights)
    build_seconds = time.perf_counter() - t_build
    # subtle: compile on a blank batch before the clock starts; images/s is then the steady-state rate, and the
    # one-time compile (seconds on a GPU under JAX) is reported on its own as warmup_seconds.
    t_warm = time.perf_counter()
    model.predict_on_batch(np.zeros((settings.batch_size, settings.image_size, settings.image_size, 3), np.uint8))
    warmup_seconds = time.perf_counter() - t_warm

    from tqdm import tqdm

    todo = pending_shards(paths, partial, shard_size=settings.shard_size)
    bar = tqdm(total=total, unit="img", desc=f"{backbone.name} features", disable=not progress, smoothing=0.1)
    bar.update(total - sum(b - a for _, _, a, b in todo))  # shards finished by an interrupted run
    t0 = time.perf_counter()
    n_new = run_extraction(
        model.predict_on_batch,
        paths,
        partial,
        todo,
        width=backbone.width,
        image_size=settings.image_size,
        batch_size=settings.batch_size,
        tta=settings.tta,
        workers=settings.workers,
        on_images=bar.update,
    )
    seconds = time.perf_counter() - t0
    bar.close()

    begin_feature_set(out_dir)  # the old manifest goes before any array is replaced
    ok = _assemble(out_dir, partial, paths, width=backbone.width, shard_size=settings.shard_size, tta=settings.tta)
    unreadable = {
        "train": [dataset.train_files[i] for i in np.flatnonzero(~ok["train"])],
        "test": [dataset.test_files[i] for i in np.flatnonzero(~ok["test"])],
    }
    for f in unreadable["train"]:
        warn(f"warning: cannot decode {dataset.root / f}; training image skipped")
    for f in unreadable["test"]:
        warn(f"warning: cannot decode {dataset.root / f}; it will get the training prior as its prediction")

    from kaggle_kit.keras_loader import load_keras

    keras = load_keras()
    features = finish_feature_set(
        out_dir, dataset, key=key, image_list_hash=image_hash, width=backbone.width, tta=settings.tta,
        unreadable=unreadable,
        backbone=backbone.name, weights=settings.weights.identity, weights_kind=settings.weights.kind,
        weights_path=settings.weights.path, preprocess=backbone.preprocess, input_size=settings.image_size,
        details=dict(
            builder=backbone.builder,
            images_computed=n_new,
            images_per_second=round(n_new / seconds, 2) if n_new and seconds > 0 else None,
            extract_seconds=round(seconds, 2),
            build_seconds=round(build_seconds, 2),
            warmup_seconds=round(warmup_seconds, 2),
            batch_size=settings.batch_size,
            keras_backend=keras.backend.backend(),
            keras_version=keras.__version__,
        ),
    )
    shutil.rmtree(partial_dir(out_dir), ignore_errors=True)
    return FeatureResult(features, cached=False)


# --------------------------------------------------------------------------------------------- the stage
def run_features(
    exp_dir: Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    data: Path | None = None,
    weights: str = "imagenet",
    image_size: int | None = None,
    tta: str = "none",
    positive: str | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    shard_size: int = 1024,
    name: str | None = None,
    force: bool = False,
    warn: Callable[[str], None] = print,
    progress: bool = True,
) -> FeatureResult:
    """``kaggle-kit features``: extract (or reuse) one backbone's features for the experiment in ``exp_dir``.

    ``data``/``positive`` default to the experiment's (else ./data and 'dog'), which then remembers them;
    ``weights`` is 'imagenet', 'none' (random: warned about), a file or a folder holding the published file
    (:func:`kaggle_kit.backbones.resolve_weights`); ``image_size`` defaults to the
    backbone's own and ``name`` to ``<backbone>[_<size>]``. Everything is checked before the experiment's lock
    is taken, so a refused run leaves nothing behind; ``warn`` gets the data folder's and the decoder's warnings.
    """
    from kaggle_kit.backbones import get_backbone, resolve_weights
    from kaggle_kit.data import discover

    if tta not in TTA_MODES:
        raise KitError(f"--tta {tta!r} is not one of: {', '.join(TTA_MODES)}", code=2)
    spec = get_backbone(backbone)
    data_dir, positive = experiment_data(exp_dir, data=data, positive=positive)
    dataset = discover(data_dir, positive=positive)
    size = image_size or spec.input_size
    choice = resolve_weights(spec, weights, image_size=size)
    out_name = check_name("feature set", name) if name else default_feature_set_name(
        spec.name, input_size=spec.input_size, image_size=size)
    settings = FeatureSettings(backbone=spec, weights=choice, image_size=size, tta=tta, batch_size=batch_size,
                               workers=workers, shard_size=shard_size)
    with experiment_lock(exp_dir, command=f"features --backbone {backbone}"):
        # Warnings only once the lock is held: a run refused as busy says so in one line.
        for w in dataset.warnings:
            warn(f"warning: {w}")
        if choice.kind == "none":
            warn("WARNING: --weights none: random weights, these features are NOT pretrained and will score poorly "
                 "(use them for plumbing tests only)")
        save_experiment(exp_dir, data_dir=dataset.root, positive=positive)
        return extract_features(dataset, features_dir(exp_dir, out_name), settings, force=force, warn=warn,
                                progress=progress)
