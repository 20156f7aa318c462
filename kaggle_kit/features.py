"""Stage 1: frozen-backbone bottleneck features for every training and test image, cached and resumable.

Output, in ``experiments/<exp>/features/<name>/``:

- ``train.npy`` float32 (n_train, width) and ``test.npy`` float32 (n_test, width), rows in the order of
  ``ids.json`` (``train_ids``, ``train_labels``, ``test_ids``), which is the data set's fixed order;
- with ``--tta flip``: ``train_flip.npy`` and ``test_flip.npy``, the same rows computed on horizontally
  flipped images. Later stages use them as a second view of each image: ``cv`` can train heads on both views
  (augmentation) and average a model's predictions over both views (test-time augmentation);
- ``manifest.json`` (format ``kaggle-kit/features/1``), written last: without it nothing here is finished.

A feature set holds the backbone's default (last-layer) features, or with ``FeatureSettings.layer`` the pooled
output of that layer (``--layer``; manifest field ``layer``). :func:`extract_feature_sets` makes several layers'
sets from one decode and one forward pass.

Extraction is written in shards (``.partial/<key>/<split>-<i>.npz``, each written atomically). A run that is
interrupted (Ctrl-C, SIGKILL) resumes from the finished shards of the same key; the key is a hash of
everything the features depend on, so shards of another configuration or of changed images are never reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kaggle_kit.artifacts import (
    KitError,
    atomic_path,
    load_npy,
    new_manifest,
    read_manifest,
    save_npy_atomic,
    sha256_array,
    sha256_json,
    write_json_atomic,
)
from kaggle_kit.backbones import Backbone, WeightsChoice
from kaggle_kit.data import Dataset

FORMAT = "kaggle-kit/features/1"
TTA_MODES = ("none", "flip")
SPLITS = ("train", "test")


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
    layer: str | None = None  # None: the backbone's default (last-layer) features; else a layer to pool

    def key(self, image_list_hash: str) -> str:
        layer = {} if self.layer is None else {"layer": self.layer}  # keys of last-layer sets stay as they were
        return sha256_json({
            "format": FORMAT,
            "backbone": self.backbone.name,
            "builder": self.backbone.builder,
            "preprocess": self.backbone.preprocess,
            "weights": self.weights.identity,
            "image_size": self.image_size,
            "tta": self.tta,
            "images": image_list_hash,
            **layer,
        })


@dataclass(frozen=True)
class FeatureResult:
    out_dir: Path
    manifest: dict
    cached: bool


def default_name(backbone: Backbone, image_size: int, layer: str | None = None) -> str:
    """``<backbone>[_<size>][-<layer>]``: the size when it is not the backbone's default, the layer when it is
    not the last (``-`` never occurs in backbone or Keras layer names, so the parts stay apart)."""
    name = backbone.name if image_size == backbone.input_size else f"{backbone.name}_{image_size}"
    return name if layer is None else f"{name}-{layer}"


def rerun_options(out_dir: Path, manifest: dict) -> str:
    """The options besides ``--backbone`` with which ``kaggle-kit features`` remakes the set in ``out_dir``."""
    from kaggle_kit.backbones import REGISTRY

    spec = REGISTRY.get(manifest["backbone"])
    size = manifest.get("input_size")
    if spec is None or size is None:  # features made by another tool (write_feature_set)
        return ""
    options = []
    if size != spec.input_size:
        options.append(f"--image-size {size}")
    if manifest.get("weights_kind") in ("none", "file"):
        options.append("--weights none" if manifest["weights_kind"] == "none" else "--weights FILE")
    if manifest.get("tta") == "flip":
        options.append("--tta flip")
    if manifest.get("layer"):
        options.append(f"--layer {manifest['layer']}")
    exp_dir = out_dir.parent.parent
    if out_dir.parent.name == "features" and exp_dir.parent.name == "experiments" and exp_dir.name != "default":
        options.append(f"--exp {exp_dir.name}")
    if out_dir.name != default_name(spec, size, manifest.get("layer")):
        options.append(f"--name {out_dir.name}")
    return " ".join(options)


def array_names(tta: str) -> dict[str, str]:
    """Logical array -> file name: 'train', 'test', and with flip TTA 'train_flip', 'test_flip'."""
    names = {split: f"{split}.npy" for split in SPLITS}
    if tta == "flip":
        names.update({f"{split}_flip": f"{split}_flip.npy" for split in SPLITS})
    return names


def cached_manifest(out_dir: Path, key: str) -> dict | None:
    """The manifest of a finished extraction with this key whose arrays are all present, else None."""
    path = out_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = read_manifest(path, fmt=FORMAT, rerun="kaggle-kit features")
    except KitError:
        return None
    if manifest.get("key") != key:
        return None
    for logical, fname in manifest.get("files", {}).items():
        if logical == "ids":
            if not (out_dir / fname).exists():
                return None
            continue
        try:
            arr = np.load(out_dir / fname, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if list(arr.shape) != manifest["shapes"].get(logical):
            return None
    return manifest


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


def _assemble(targets: list[tuple[Path, slice]], partial: Path, paths: dict[str, list[Path]], *, shard_size: int,
              tta: str) -> dict[str, np.ndarray]:
    """Stream the shards into the final arrays (memory-mapped, atomic); return the ok mask of each split.

    ``targets``: (feature set folder, its columns of the shards' features); one layer's features sit side by
    side with the others' in a shard. Each shard is read once; peak memory is one shard, whatever the number
    of images.
    """
    ok_masks = {}
    for split, split_paths in paths.items():
        sources = {"feats": split, **({"flip": f"{split}_flip"} if tta == "flip" else {})}
        n = len(split_paths)
        with contextlib.ExitStack() as stack:
            outs = []
            for out_dir, columns in targets:
                for key, logical in sources.items():
                    tmp = stack.enter_context(atomic_path(out_dir / f"{logical}.npy", suffix=".npy"))
                    width = columns.stop - columns.start
                    memmap = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, width))
                    outs.append((key, columns, memmap))
            ok = np.zeros(n, dtype=bool)
            for index, (a, b) in enumerate(_shard_ranges(n, shard_size)):
                shard = _load_shard(_shard_path(partial, split, index))
                if shard is None:
                    raise KitError(f"shard {split}-{index} in {partial} vanished while assembling; run again")
                for key, columns, out in outs:
                    out[a:b] = shard[key][:, columns]
                ok[a:b] = shard["ok"]
            for _, _, out in outs:
                out.flush()
            outs.clear()  # subtle: close the memory maps before atomic_path renames the files
        ok_masks[split] = ok
    return ok_masks


def _write_ids_and_manifest(out_dir: Path, dataset: Dataset, *, key: str, image_hash: str, width: int, tta: str,
                            unreadable: dict[str, list[str]], **fields) -> dict:
    """Write ``ids.json`` then ``manifest.json`` (last: it marks the feature set finished); return the manifest.

    ``unreadable`` maps 'train'/'test' to the relative files that could not be decoded; the manifest keeps them
    and their ids (``unreadable_ids``: blend keeps the training prior for such test rows).
    """
    ids = {"train_ids": list(dataset.train_ids), "train_labels": dataset.y.tolist(),
           "test_ids": list(dataset.test_ids)}
    write_json_atomic(out_dir / "ids.json", ids)
    rows = {"train": dataset.n_train, "test": dataset.n_test}
    bad = {split: set(files) for split, files in unreadable.items()}
    unreadable_ids = {
        "train": [i for f, i in zip(dataset.train_files, dataset.train_ids) if f in bad["train"]],
        "test": [i for f, i in zip(dataset.test_files, dataset.test_ids) if f in bad["test"]],
    }
    manifest = new_manifest(
        FORMAT,
        key=key,
        name=out_dir.name,
        tta=tta,
        width=width,
        data_dir=str(dataset.root),
        layout=dataset.layout,
        classes=list(dataset.classes),
        positive=dataset.positive,
        image_list_hash=image_hash,
        ids_sha256=sha256_json(ids),
        n_train=dataset.n_train,
        n_test=dataset.n_test,
        files={**array_names(tta), "ids": "ids.json"},
        shapes={k: [rows[k.split("_")[0]], width] for k in array_names(tta)},
        unreadable=unreadable,
        unreadable_ids=unreadable_ids,
        **fields,
    )
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def write_feature_set(out_dir: Path, dataset: Dataset, arrays: dict[str, np.ndarray], *, backbone: str,
                      note: str) -> dict:
    """Save features computed elsewhere as a finished feature set that every later stage accepts.

    ``arrays``: 'train' (n_train, width) and 'test' (n_test, width), optionally 'train_flip'/'test_flip', rows
    in ``dataset``'s order. ``note`` says where they come from (it stands in the manifest as their weights).
    Used by benchmarks and tests, and for features made by another tool.
    """
    tta = "flip" if "train_flip" in arrays else "none"
    if set(arrays) != set(array_names(tta)):
        raise KitError(f"feature arrays must be {sorted(array_names(tta))}, got {sorted(arrays)}")
    width = arrays["train"].shape[1]
    rows = {"train": dataset.n_train, "test": dataset.n_test}
    for logical, arr in arrays.items():
        if arr.shape != (rows[logical.split("_")[0]], width):
            raise KitError(f"feature array {logical!r} has shape {arr.shape}, expected ({rows[logical.split('_')[0]]}, {width})")
    image_hash = dataset.image_list_hash()
    key = sha256_json({"format": FORMAT, "backbone": backbone, "weights": note, "images": image_hash,
                       "arrays": {k: sha256_array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    for logical, arr in arrays.items():
        save_npy_atomic(out_dir / f"{logical}.npy", np.asarray(arr, dtype=np.float32))
    return _write_ids_and_manifest(out_dir, dataset, key=key, image_hash=image_hash, width=width, tta=tta,
                                   unreadable={"train": [], "test": []}, backbone=backbone, weights=note,
                                   weights_kind="external", preprocess=None, input_size=None)


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
    return extract_feature_sets(dataset, [(out_dir, settings)], force=force, warn=warn, progress=progress)[0]


def extract_feature_sets(
    dataset: Dataset,
    jobs: Sequence[tuple[Path, FeatureSettings]],
    *,
    force: bool = False,
    warn: Callable[[str], None] = print,
    progress: bool = True,
) -> list[FeatureResult]:
    """Extract (or reuse) several feature sets that differ only in their ``layer``, from one decode of each
    image and one forward pass of a model with one output per layer; one result per job, in order.

    Each set is cached and written on its own (its key includes its layer); only the missing ones are computed.
    The shards of a run hold all of its layers side by side, in the first computed set's ``.partial/``, so an
    interrupted run resumes when the same sets are asked for again.
    """
    if not jobs:
        return []
    settings = jobs[0][1]
    if any(dataclasses.replace(s, layer=None) != dataclasses.replace(settings, layer=None) for _, s in jobs):
        raise ValueError("feature sets extracted together must differ only in their layer")
    if len({s.layer for _, s in jobs}) != len(jobs) or len({d for d, _ in jobs}) != len(jobs):
        raise ValueError("each layer and each folder may be asked for once")
    image_hash = dataset.image_list_hash()
    keys = [s.key(image_hash) for _, s in jobs]
    results: list[FeatureResult | None] = [None] * len(jobs)
    if not force:
        for i, (out_dir, _) in enumerate(jobs):
            manifest = cached_manifest(out_dir, keys[i])
            if manifest is not None:
                results[i] = FeatureResult(out_dir, manifest, cached=True)
    todo_jobs = [i for i, r in enumerate(results) if r is None]
    if not todo_jobs:
        return results

    backbone = settings.backbone
    layers = [jobs[i][1].layer for i in todo_jobs]
    t_build = time.perf_counter()
    from kaggle_kit.backbones import LAST, build_extractor

    # Built before anything is written: an unknown layer is refused without leaving folders behind.
    if layers == [None]:
        model = build_extractor(backbone, image_size=settings.image_size, weights=settings.weights)
        widths = [backbone.width]
        predict = model.predict_on_batch
    else:
        model = build_extractor(backbone, image_size=settings.image_size, weights=settings.weights,
                                layers=[LAST if layer is None else layer for layer in layers])
        # subtle: Keras hands back a one-output model's output bare, not in a list of one
        widths = [int(shape[-1]) for shape in (model.output_shape if len(layers) > 1 else [model.output_shape])]

        def predict(batch: np.ndarray) -> np.ndarray:
            outputs = model.predict_on_batch(batch)
            return np.concatenate([np.asarray(out) for out in outputs], axis=1) if len(layers) > 1 \
                else np.asarray(outputs)
    build_seconds = time.perf_counter() - t_build

    # One group key for the sets made together; a single set keeps its own key (as before multi-layer runs).
    group = keys[todo_jobs[0]] if len(todo_jobs) == 1 else sha256_json(sorted(keys[i] for i in todo_jobs))
    out_dirs = [jobs[i][0] for i in todo_jobs]
    partial = out_dirs[0] / ".partial" / group[:16]
    if force and partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    for out_dir in out_dirs:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in (out_dir / ".partial").glob("*"):  # shards of other configurations are never used again
            if stale != partial:
                shutil.rmtree(stale, ignore_errors=True)
        for stale in out_dir.glob(".*.tmp"):  # arrays of a run killed while assembling (as large as the results)
            stale.unlink(missing_ok=True)

    paths = {"train": dataset.train_paths(), "test": dataset.test_paths()}
    total = sum(len(p) for p in paths.values())
    # subtle: compile on a blank batch before the clock starts; images/s is then the steady-state rate, and the
    # one-time compile (seconds on a GPU under JAX) is reported on its own as warmup_seconds.
    t_warm = time.perf_counter()
    predict(np.zeros((settings.batch_size, settings.image_size, settings.image_size, 3), np.uint8))
    warmup_seconds = time.perf_counter() - t_warm

    from tqdm import tqdm

    todo = pending_shards(paths, partial, shard_size=settings.shard_size)
    bar = tqdm(total=total, unit="img", desc=f"{backbone.name} features", disable=not progress, smoothing=0.1)
    bar.update(total - sum(b - a for _, _, a, b in todo))  # shards finished by an interrupted run
    t0 = time.perf_counter()
    n_new = run_extraction(
        predict,
        paths,
        partial,
        todo,
        width=sum(widths),
        image_size=settings.image_size,
        batch_size=settings.batch_size,
        tta=settings.tta,
        workers=settings.workers,
        on_images=bar.update,
    )
    seconds = time.perf_counter() - t0
    bar.close()

    # subtle: drop the old manifests before replacing arrays, so a crash in between never pairs old metadata
    # with new arrays; the new manifests are written only after every array is in place.
    for out_dir in out_dirs:
        (out_dir / "manifest.json").unlink(missing_ok=True)
    edges = np.cumsum([0, *widths])
    ok = _assemble([(out_dir, slice(int(a), int(b))) for out_dir, a, b in zip(out_dirs, edges[:-1], edges[1:])],
                   partial, paths, shard_size=settings.shard_size, tta=settings.tta)
    unreadable = {
        "train": [dataset.train_files[i] for i in np.flatnonzero(~ok["train"])],
        "test": [dataset.test_files[i] for i in np.flatnonzero(~ok["test"])],
    }
    for f in unreadable["train"]:
        warn(f"warning: cannot decode {dataset.root / f}; training image skipped")
    for f in unreadable["test"]:
        warn(f"warning: cannot decode {dataset.root / f}; it will get the training prior as its prediction")

    import keras

    for i, out_dir, width in zip(todo_jobs, out_dirs, widths):
        layer = {} if jobs[i][1].layer is None else {"layer": jobs[i][1].layer}
        manifest = _write_ids_and_manifest(
            out_dir, dataset, key=keys[i], image_hash=image_hash, width=width, tta=settings.tta,
            unreadable=unreadable,
            backbone=backbone.name,
            builder=backbone.builder,
            weights=settings.weights.identity,
            weights_kind=settings.weights.kind,
            input_size=settings.image_size,
            preprocess=backbone.preprocess,
            **layer,
            extracted_with=[jobs[j][0].name for j in todo_jobs],  # the sets made in the same pass
            images_computed=n_new,
            images_per_second=round(n_new / seconds, 2) if n_new and seconds > 0 else None,
            extract_seconds=round(seconds, 2),
            build_seconds=round(build_seconds, 2),
            warmup_seconds=round(warmup_seconds, 2),
            batch_size=settings.batch_size,
            keras_backend=keras.backend.backend(),
            keras_version=keras.__version__,
        )
        results[i] = FeatureResult(out_dir, manifest, cached=False)
    for out_dir in out_dirs:
        shutil.rmtree(out_dir / ".partial", ignore_errors=True)
    return results


# ------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class FeatureSet:
    """A finished feature set, memory-mapped: ``arrays`` maps 'train', 'test' (+ '_flip') to (rows, width)."""

    name: str
    manifest: dict
    arrays: dict[str, np.ndarray]
    train_ids: tuple[str, ...]
    y: np.ndarray
    test_ids: tuple[str, ...]


def load_features(out_dir: Path, *, image_list_hash: str | None = None) -> FeatureSet:
    """Load a feature set through its manifest, refusing one whose images no longer match the data."""
    rerun = f"kaggle-kit features --backbone <backbone> (feature set '{out_dir.name}')"
    manifest = read_manifest(out_dir / "manifest.json", fmt=FORMAT, rerun=rerun)
    if image_list_hash is not None and manifest["image_list_hash"] != image_list_hash:
        options = rerun_options(out_dir, manifest)
        raise KitError(
            f"features in {out_dir} were computed on other images than the data folder now holds; "
            f"re-run 'kaggle-kit features --backbone {manifest['backbone']}'" + (f" with {options}" if options else "")
        )
    with open(out_dir / manifest["files"]["ids"], encoding="utf-8") as fh:
        ids = json.load(fh)
    if sha256_json(ids) != manifest["ids_sha256"]:
        raise KitError(f"{out_dir / 'ids.json'} does not match its manifest; re-run 'kaggle-kit features --force'")
    arrays = {}
    for logical, fname in manifest["files"].items():
        if logical == "ids":
            continue
        arr = load_npy(out_dir / fname)
        if list(arr.shape) != manifest["shapes"][logical] or arr.dtype != np.float32:
            raise KitError(
                f"{out_dir / fname} has shape {arr.shape} {arr.dtype}, manifest says {manifest['shapes'][logical]}"
                f" float32; re-run 'kaggle-kit features --backbone {manifest['backbone']} --force'"
            )
        arrays[logical] = arr
    return FeatureSet(
        name=out_dir.name,
        manifest=manifest,
        arrays=arrays,
        train_ids=tuple(ids["train_ids"]),
        y=np.asarray(ids["train_labels"], dtype=np.int8),
        test_ids=tuple(ids["test_ids"]),
    )
