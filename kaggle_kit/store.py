"""The experiment's on-disk layout: every path, format, manifest key, writer and loader under ``experiments/<exp>/``.

One owner per format: the stages compute, this module writes and reads what they computed. Each loader checks
everything it can (format, required manifest keys, shapes, dtypes, hashes, results made on another fold plan or
on since-changed features) and refuses with one line naming the command that makes the file again, spelt as a
user types it (with ``--exp`` when the experiment is not ``default``). Other modules never build these paths
or read these manifest keys themselves: they use the functions and the typed records here.

Layout::

    experiments/<exp>/experiment.json     kaggle-kit/experiment/1: the data folder, how to read it, the metric
    experiments/<exp>/lock                held while a command writes (artifacts.experiment_lock)
    experiments/<exp>/features/<name>/    kaggle-kit/features/1
        train.npy, test.npy               float32 (n_train, width), (n_test, width)
        train_flip.npy, test_flip.npy     the same rows on horizontally flipped images (``--tta flip``)
        train_<view>[_flip].npy, ...      each extra view (``--views N``: train_zoom.npy, test_rot90_flip.npy;
                                          kaggle_kit/views.py), flipped too under flip TTA
        ids.json                          the row order: train_ids, train_labels, test_ids
        .partial/<key>/<split>-<i>.npz    shards of an unfinished extraction: 'feats' float32 (rows, width), 'ok'
                                          bool (rows,), with flip TTA 'flip' float32 (rows, width), each extra
                                          view under its own key ('zoom', 'zoom_flip'); 'widths' int64
                                          (layers,): the layers extracted in one pass (``--layer``) side by side
                                          in every view's array, kept in the first set's folder
    experiments/<exp>/folds/              kaggle-kit/folds/1: the one fold plan of the experiment
        plan.npy                          int8 (repeats, n_train): the fold of each training row per repeat
        y.npy, ids.json                   int8 (n_train,) labels; train_ids, test_ids
    experiments/<exp>/cv/<model>/         kaggle-kit/cv/1: one model's cross-validation (<model>_pl: its
                                          pseudo-labelling twin, ``cv --pseudo``)
        oof.npy                           float32 (repeats, n_train): out-of-fold P(positive), NaN on left-out rows
        test.npy                          float32 (n_test,): test P(positive)
    experiments/<exp>/blend/              kaggle-kit/blend/2
        oof.npy                           float32 (n_train,): cross-fitted OOF of the calibrated blend
        oof_uncalibrated.npy              float32 (n_train,): the same before calibration
        test.npy                          float32 (n_test,): the calibrated blend's test predictions, unclipped
        manifest.json                     its metric (absent in older blends: log loss), ladder scored as
                                          oof_<metric>, clip null unless the metric is log loss
    experiments/<exp>/report.html         the report page, and its plots as PNG in report/

Every stage folder holds a ``manifest.json``, written last: without it nothing there is finished. A writer
first drops the old manifest, then writes the arrays (each atomically), then the new manifest, so a crash never
pairs an old manifest with new arrays.
"""

from __future__ import annotations

import math
import shlex
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from kaggle_kit.artifacts import (
    KitError,
    atomic_path,
    check_name,
    load_npy,
    new_manifest,
    read_json,
    read_manifest,
    save_npy_atomic,
    sha256_array,
    sha256_json,
    write_bytes_atomic,
    write_json_atomic,
)
from kaggle_kit.data import DATA_OPTIONS, LAYOUTS
from kaggle_kit.metrics import DEFAULT_METRIC, METRICS

if TYPE_CHECKING:
    import pandas as pd

    from kaggle_kit.data import Dataset

EXPERIMENTS = "experiments"
DEFAULT_EXPERIMENT = "default"
MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------------------------ commands
def experiment_dir(exp: str, *, root: Path | str = ".") -> Path:
    """``<root>/experiments/<exp>``, refusing names that could escape it."""
    return Path(root) / EXPERIMENTS / check_name("experiment", exp)


def command(exp_dir: Path, stage: str, *options: str) -> str:
    """``kaggle-kit STAGE [--exp NAME] OPTIONS...`` as a user types it: the re-run hint of every error here.

    ``--exp`` is named when ``exp_dir`` is ``experiments/<exp>`` for an experiment other than the default (a
    folder elsewhere cannot be reached with ``--exp``). Options are words, quoted for a shell where needed.
    """
    words = ["kaggle-kit", stage]
    if exp_dir.parent.name == EXPERIMENTS and exp_dir.name != DEFAULT_EXPERIMENT:
        words += ["--exp", exp_dir.name]
    return shlex.join([*words, *options])


def _read(path: Path, fmt: str, keys: Sequence[str], *, rerun: str) -> dict[str, Any]:
    """A manifest of format ``fmt`` holding every one of ``keys``; ``rerun`` is the command that rewrites it."""
    manifest = read_manifest(path, fmt=fmt, rerun=rerun)
    missing = [key for key in keys if key not in manifest]
    if missing:
        raise KitError(f"{path} lacks {', '.join(missing)}; re-run '{rerun}'")
    return manifest


def _finished(root: Path) -> list[str]:
    """Names of the folders in ``root`` that hold a manifest (finished results), sorted."""
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []


# ---------------------------------------------------------------------------------------------- experiment
EXPERIMENT_FORMAT = "kaggle-kit/experiment/1"
_EXPERIMENT_KEYS = ("data_dir", "positive")
# Optional settings besides the data folder and the positive class (experiment.json files written before they
# existed simply lack them): how to read the folder (kaggle_kit.data.DATA_OPTIONS) and the competition's metric.
EXPERIMENT_OPTIONAL = ("layout", "labels", "id_col", "target_col", "metric")
# subtle: these say how one particular folder is read; a new --data, --layout or --labels starts from none of them.
_READING = ("layout", "labels", "id_col", "target_col")
DEFAULT_DATA = Path("data")


@dataclass(frozen=True)
class DataSettings:
    """The data folder and how to read it: ``kaggle_kit.data.discover(data_dir, **options())``. None: decided
    by ``discover`` (the layout detected, the columns inferred, the positive class 'dog' or the target's 1)."""

    data_dir: Path
    positive: str | None = None
    layout: str | None = None
    labels: str | None = None
    id_col: str | None = None
    target_col: str | None = None

    def options(self) -> dict[str, str | None]:
        """``discover``'s keyword options (``kaggle_kit.data.DATA_OPTIONS``)."""
        return {key: getattr(self, key) for key in DATA_OPTIONS}


@dataclass(frozen=True)
class Experiment(DataSettings):
    """What ``experiment.json`` remembers: the competition folder, the class whose label is 1, how the folder
    was read (``layout``, ``labels``, ``id_col``, ``target_col``; None in files written before they existed,
    and where they do not apply) and the competition's metric (None: log loss)."""

    positive: str
    metric: str | None = None


def _experiment_problems(manifest: Mapping[str, Any]) -> list[str]:
    problems = [f"{key} {manifest[key]!r} is not text" for key in (*_EXPERIMENT_KEYS, *EXPERIMENT_OPTIONAL)
                if manifest.get(key) is not None and not isinstance(manifest[key], str)]
    for key, choices in (("layout", LAYOUTS), ("metric", METRICS)):
        if isinstance(manifest.get(key), str) and manifest[key] not in choices:
            problems.append(f"{key} {manifest[key]!r} is not one of {', '.join(choices)}")
    return problems


def load_experiment(exp_dir: Path) -> Experiment | None:
    """The experiment's remembered settings, or None for a new experiment."""
    path = exp_dir / "experiment.json"
    if not path.exists():
        return None
    rerun = command(exp_dir, "features", "--data", "DIR")
    manifest = _read(path, EXPERIMENT_FORMAT, _EXPERIMENT_KEYS, rerun=rerun)
    problems = _experiment_problems(manifest)
    if problems:
        raise KitError(f"{path}: {'; '.join(problems)}; re-run '{rerun}'")
    return Experiment(data_dir=Path(manifest["data_dir"]), positive=manifest["positive"],
                      **{key: manifest.get(key) for key in EXPERIMENT_OPTIONAL})


def save_experiment(exp_dir: Path, *, data_dir: Path, positive: str, layout: str | None = None,
                    labels: str | None = None, id_col: str | None = None, target_col: str | None = None,
                    metric: str | None = None) -> None:
    """Write ``experiment.json``; settings given as None are not stored."""
    optional = {"layout": layout, "labels": labels, "id_col": id_col, "target_col": target_col, "metric": metric}
    write_json_atomic(exp_dir / "experiment.json", new_manifest(
        EXPERIMENT_FORMAT, data_dir=str(data_dir), positive=positive,
        **{key: value for key, value in optional.items() if value is not None}))


def remember_data(exp_dir: Path, dataset: Dataset, *, metric: str | None) -> None:
    """Remember the data folder as ``dataset`` was read from it (and the metric) for the experiment's later
    commands."""
    save_experiment(exp_dir, data_dir=dataset.root, positive=dataset.positive, layout=dataset.layout,
                    labels=dataset.labels_file, id_col=dataset.id_col, target_col=dataset.target_col, metric=metric)


def remember_metric(exp_dir: Path, metric: str) -> None:
    """Make ``metric`` the experiment's (when it remembers a data folder and another metric)."""
    remembered = load_experiment(exp_dir)
    if remembered is not None and remembered.metric != metric:
        save_experiment(exp_dir, data_dir=remembered.data_dir, positive=remembered.positive,
                        **{**{key: getattr(remembered, key) for key in _READING}, "metric": metric})


def experiment_data(exp_dir: Path, *, data: Path | None = None, positive: str | None = None,
                    layout: str | None = None, labels: str | None = None, id_col: str | None = None,
                    target_col: str | None = None) -> DataSettings:
    """The data folder to read and how: the settings given win; the experiment's are kept for its own folder
    (a new ``data``, ``layout`` or ``labels`` starts from none of the others that say how a folder is read);
    without either, ./data with every setting left to ``discover``."""
    remembered = load_experiment(exp_dir)
    same = remembered is not None and (data is None or Path(data).expanduser().resolve() == remembered.data_dir)
    relayout = layout is not None or labels is not None
    given = {"positive": positive, "layout": layout, "labels": labels, "id_col": id_col, "target_col": target_col}
    chosen = {}
    for key, value in given.items():
        keep = same and not (relayout and key in _READING)
        chosen[key] = value if value is not None else (getattr(remembered, key) if keep else None)
    if data is None:
        data = remembered.data_dir if remembered is not None else DEFAULT_DATA
    return DataSettings(data_dir=Path(data), **chosen)


def experiment_metric(exp_dir: Path, metric: str | None = None) -> str:
    """The metric given, else the experiment's, else log loss; refuses one not in ``kaggle_kit.metrics.METRICS``."""
    if metric is not None:
        if metric not in METRICS:
            raise KitError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}", code=2)
        return metric
    remembered = load_experiment(exp_dir)
    return remembered.metric if remembered is not None and remembered.metric else DEFAULT_METRIC


def require_experiment(exp_dir: Path) -> Path:
    """Refuse an experiment that does not exist (before a lock would create its folder)."""
    if not exp_dir.is_dir():
        raise KitError(f"experiment {exp_dir} does not exist; run 'kaggle-kit features' and 'kaggle-kit cv' first")
    return exp_dir


# ------------------------------------------------------------------------------------------------ features
FEATURES_FORMAT = "kaggle-kit/features/1"
FEATURE_SPLITS = ("train", "test")
_FEATURES_KEYS = ("key", "name", "backbone", "tta", "width", "image_list_hash", "ids_sha256", "n_train", "n_test",
                  "files", "shapes", "unreadable", "unreadable_ids")
EXTERNAL_WEIGHTS = "external"  # weights_kind of features made by another tool (save_feature_set)
DEFAULT_DECODER = "opencv"  # the 'decoder' of feature sets written before the key existed (decoders.DECODERS)
DEFAULT_POOL = "avg"  # the 'pool' of feature sets written before the key existed (backbones.POOLS)
DEFAULT_ENGINE = "local"  # the 'engine' of feature sets written before the key existed (features.ENGINES)


def features_root(exp_dir: Path) -> Path:
    """The folder of the experiment's feature sets."""
    return exp_dir / "features"


def features_dir(exp_dir: Path, name: str) -> Path:
    return features_root(exp_dir) / check_name("feature set", name)


def partial_dir(out_dir: Path) -> Path:
    """Where an unfinished extraction keeps its shards, one subfolder per configuration key."""
    return out_dir / ".partial"


def shard_path(partial: Path, split: str, index: int) -> Path:
    """Shard ``index`` of ``split`` in ``partial`` (a configuration's subfolder of :func:`partial_dir`)."""
    return partial / f"{split}-{index:05d}.npz"


def shard_key(suffix: str) -> str:
    """The key of a view's features in a shard: 'feats' for the images as they are (suffix ''), else the view's
    suffix (:func:`kaggle_kit.views.view_suffixes`: 'flip', 'zoom', 'zoom_flip', ...)."""
    return suffix or "feats"


def save_shard(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write one shard atomically: 'feats' float32 (rows, width), 'ok' bool (rows,), each further view's features
    under its :func:`shard_key` ('flip', ...), and 'widths' int64 (layers,): the width of each layer whose
    features sit side by side in every view's array."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_shard(path: Path) -> dict[str, np.ndarray] | None:
    """A shard's arrays, or None when it is missing or damaged (it is then recomputed, never trusted). A shard
    written before 'widths' existed holds one layer: its 'widths' is then the width of 'feats'."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if "feats" in arrays and "widths" not in arrays:
        arrays["widths"] = np.asarray([arrays["feats"].shape[1]], dtype=np.int64)
    return arrays


def shard_is_complete(path: Path, rows: int) -> bool:
    """True when the shard exists, opens, and holds ``rows`` rows (reads only its small 'ok' array)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "feats" in z.files and z["ok"].shape == (rows,)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def default_feature_set_name(backbone: str, *, input_size: int, image_size: int, layer: str | None = None,
                             pool: str = DEFAULT_POOL) -> str:
    """``<backbone>[_<size>][-<layer>][.<pool>]``: the size when it is not the backbone's own, the layer when it is
    not the last, the pooling when it is not the average (``-`` and ``.`` never occur in backbone or Keras layer
    names, so the parts stay apart)."""
    name = backbone if image_size == input_size else f"{backbone}_{image_size}"
    name = name if layer is None else f"{name}-{layer}"
    return name if pool == DEFAULT_POOL else f"{name}.{pool}"


def feature_set_names(exp_dir: Path) -> list[str]:
    """Names of the experiment's finished feature sets, sorted; refuses an experiment without any."""
    names = _finished(features_root(exp_dir))
    if not names:
        raise KitError(f"no cached features in {features_root(exp_dir)}; run 'kaggle-kit features --backbone ...' "
                       "first")
    return names


def feature_array_files(tta: str, views: Sequence[str] = ()) -> dict[str, str]:
    """Logical array -> file name: 'train', 'test', with flip TTA 'train_flip', 'test_flip', and each extra view's
    ('train_zoom', 'train_zoom_flip', ...; :func:`kaggle_kit.views.view_suffixes`)."""
    from kaggle_kit.views import array_name, view_suffixes

    return {array_name(split, suffix): f"{array_name(split, suffix)}.npy"
            for suffix in view_suffixes(tta == "flip", views) for split in FEATURE_SPLITS}


def feature_views(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """A feature set's extra views (``--views``), from its manifest: () for sets made before views existed."""
    return tuple(manifest.get("views", ()))


def feature_array_path(out_dir: Path, logical: str) -> Path:
    return out_dir / f"{logical}.npy"


def _rows(logical: str, n_train: int, n_test: int) -> int:
    return {"train": n_train, "test": n_test}[logical.split("_")[0]]


def features_command(out_dir: Path, manifest: Mapping[str, Any] | None = None, *, force: bool = False) -> str:
    """The ``kaggle-kit features`` command that makes the feature set in ``out_dir`` again.

    Its options follow the manifest, or without one the folder's name (``resnet50_32``: ``--backbone resnet50
    --image-size 32``); ``--weights FILE`` stands for the file the manifest knows only by its hash.
    """
    from kaggle_kit.backbones import REGISTRY  # subtle: only on the way to an error, so blend never loads it

    manifest = manifest or {}
    name = out_dir.name
    # Without a manifest, the folder's name says it: <backbone>[_<size>][-<layer>][.<pool>].
    named, _, named_pool = name.partition(".")
    stem, _, named_layer = named.partition("-")
    backbone = manifest.get("backbone") or next(
        (b for b in sorted(REGISTRY, key=len, reverse=True)
         if stem == b or (stem.startswith(f"{b}_") and stem[len(b) + 1:].isdigit())), None)
    spec = REGISTRY.get(backbone) if backbone else None
    options = ["--backbone", backbone or "BACKBONE"]
    size = manifest.get("input_size")
    if spec is not None and size is None and stem != spec.name and not manifest:
        size = int(stem[len(spec.name) + 1:])
    layer = manifest.get("layer") if manifest else (named_layer or None)
    pool = manifest.get("pool", DEFAULT_POOL) if manifest else (named_pool or DEFAULT_POOL)
    size = size or (spec.input_size if spec is not None else None)
    if spec is not None and size != spec.input_size:
        options += ["--image-size", str(size)]
    if manifest.get("weights_kind") in ("none", "file"):
        options += ["--weights", "none" if manifest["weights_kind"] == "none" else "FILE"]
    if manifest.get("tta") == "flip":
        options += ["--tta", "flip"]
    if manifest.get("views"):
        from kaggle_kit.views import views_options

        count, kind = views_options(manifest["views"])
        options += ["--views", str(count), "--view-kind", kind]
    if manifest.get("decoder") not in (None, DEFAULT_DECODER):
        options += ["--decoder", manifest["decoder"]]
    if layer is not None:
        options += ["--layer", layer]
    if pool != DEFAULT_POOL:
        options += ["--pool", pool]
    if spec is None or name != default_feature_set_name(spec.name, input_size=spec.input_size, image_size=size,
                                                        layer=layer, pool=pool):
        options += ["--name", name]
    if force:
        options.append("--force")
    return command(out_dir.parent.parent, "features", *options)


def features_advice(out_dir: Path, manifest: Mapping[str, Any] | None = None, *, force: bool = False) -> str:
    """What makes the feature set in ``out_dir`` again: "re-run 'kaggle-kit features ...'", or for features
    made by another tool (:func:`save_feature_set`), that tool."""
    if manifest and manifest.get("weights_kind") == EXTERNAL_WEIGHTS:
        return f"write it again with the tool that made it (its note: {manifest.get('weights')!r})"
    return f"re-run '{features_command(out_dir, manifest, force=force)}'"


@dataclass(frozen=True)
class ClusterRun:
    """The Ray engine's figures of a feature set (``--engine ray``; manifest keys of the same names, the address
    as ``ray_address``). ``shard_seconds``: each shard's compute time on its worker, in the order they came
    back; ``worker_restarts``: worker processes that died and were replaced."""

    address: str
    workers: int
    nodes: int
    cpus_per_worker: float
    gpus_per_worker: float
    worker_restarts: int
    startup_seconds: float
    shard_seconds: tuple[float, ...]
    shard_write_seconds: float

    def fields(self) -> dict[str, Any]:
        """The manifest's keys and values."""
        return {"ray_address": self.address, "workers": self.workers, "nodes": self.nodes,
                "cpus_per_worker": self.cpus_per_worker, "gpus_per_worker": self.gpus_per_worker,
                "worker_restarts": self.worker_restarts, "startup_seconds": self.startup_seconds,
                "shard_seconds": list(self.shard_seconds), "shard_write_seconds": self.shard_write_seconds}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ClusterRun | None:
        """The record of a manifest written by the Ray engine after it ran workers, else None."""
        if manifest.get("engine") != "ray" or "ray_address" not in manifest:
            return None
        return cls(address=manifest["ray_address"], workers=manifest["workers"], nodes=manifest["nodes"],
                   cpus_per_worker=manifest["cpus_per_worker"], gpus_per_worker=manifest["gpus_per_worker"],
                   worker_restarts=manifest["worker_restarts"], startup_seconds=manifest["startup_seconds"],
                   shard_seconds=tuple(manifest["shard_seconds"]), shard_write_seconds=manifest["shard_write_seconds"])


@dataclass(frozen=True)
class FeatureSet:
    """A finished feature set, memory-mapped: ``arrays`` maps 'train', 'test' (+ '_flip', + each extra view's:
    :func:`feature_array_files`) to (rows, width) float32; ``train_ids``, ``y`` (int8 (n_train,)) and
    ``test_ids`` give the row order."""

    path: Path
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]
    train_ids: tuple[str, ...]
    y: np.ndarray
    test_ids: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def key(self) -> str:
        """Hash of everything the features depend on: cv results record it, and are stale when it changes."""
        return self.manifest["key"]

    @property
    def backbone(self) -> str:
        return self.manifest["backbone"]

    @property
    def width(self) -> int:
        return self.manifest["width"]

    @property
    def tta(self) -> str:
        return self.manifest["tta"]

    @property
    def views(self) -> tuple[str, ...]:
        """The extra views (``--views``; kaggle_kit/views.py), () when there are none."""
        return feature_views(self.manifest)

    @property
    def view_suffixes(self) -> list[str]:
        """Every view's array suffix, in cv's order ('', 'flip', 'zoom', 'zoom_flip', ...)."""
        from kaggle_kit.views import view_suffixes

        return view_suffixes(self.tta == "flip", self.views)

    @property
    def n_train(self) -> int:
        return self.manifest["n_train"]

    @property
    def n_test(self) -> int:
        return self.manifest["n_test"]

    def unreadable(self, split: str) -> frozenset[str]:
        """The relative files of ``split`` ('train' or 'test') that could not be decoded."""
        return frozenset(self.manifest["unreadable"][split])

    @property
    def unreadable_test_ids(self) -> frozenset[str]:
        return frozenset(self.manifest["unreadable_ids"]["test"])

    @property
    def decoder(self) -> str | None:
        """What decoded the images ('opencv', 'dali': decoders.DECODERS); 'opencv' for a set written before the
        key existed, None for features made by another tool."""
        return self.manifest.get("decoder", DEFAULT_DECODER)

    @property
    def engine(self) -> str | None:
        """What computed the shards ('local', 'ray': features.ENGINES); 'local' for a set written before the key
        existed, None for features made by another tool. It never changes the features (not in the key)."""
        return self.manifest.get("engine", DEFAULT_ENGINE)

    @property
    def cluster(self) -> ClusterRun | None:
        """The Ray engine's figures when it ran workers for this set (a resumed run may have had nothing left)."""
        return ClusterRun.from_manifest(self.manifest)

    @property
    def weights(self) -> str | None:
        """The identity of the weights the features were made with (a hash, a published file, 'none ...')."""
        return self.manifest.get("weights")

    @property
    def weights_kind(self) -> str | None:
        """'imagenet', 'file', 'none', or :data:`EXTERNAL_WEIGHTS` for features made by another tool."""
        return self.manifest.get("weights_kind")

    @property
    def weights_path(self) -> str | None:
        """The local weights file that was loaded, where there was one (None: downloaded by Keras, a port's
        packaged file, random weights, or a feature set made before the path was recorded)."""
        return self.manifest.get("weights_path")

    @property
    def input_size(self) -> int | None:
        """The square size the backbone saw the photos at (None for features made by another tool)."""
        return self.manifest.get("input_size")

    @property
    def layer(self) -> str | None:
        """The layer the features were pooled from; None (or 'last'): the backbone's last feature map."""
        return self.manifest.get("layer")

    @property
    def pool(self) -> str:
        """How the layer's feature map was pooled: 'avg' (every set made before ``--pool`` existed), 'max' or
        'avgmax' (:data:`kaggle_kit.backbones.POOLS`)."""
        return self.manifest.get("pool", DEFAULT_POOL)

    @property
    def images_per_second(self) -> float | None:
        return self.manifest.get("images_per_second")

    @property
    def build_seconds(self) -> float | None:
        """Seconds to build the model (with the Ray engine: the slowest worker's)."""
        return self.manifest.get("build_seconds")

    @property
    def warmup_seconds(self) -> float | None:
        """Seconds of the model's first, compiling call (with the Ray engine: the slowest worker's)."""
        return self.manifest.get("warmup_seconds")

    @property
    def extract_seconds(self) -> float | None:
        return self.manifest.get("extract_seconds")


def _features_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / MANIFEST
    if not path.exists():
        raise KitError(f"{path} does not exist; run '{features_command(out_dir)}' first")
    manifest = read_manifest(path, fmt=FEATURES_FORMAT, rerun=features_command(out_dir, force=True))
    missing = [key for key in _FEATURES_KEYS if key not in manifest]
    if missing:
        raise KitError(f"{path} lacks {', '.join(missing)}; {features_advice(out_dir, manifest, force=True)}")
    return manifest


def load_features(out_dir: Path, *, image_list_hash: str | None = None) -> FeatureSet:
    """Load a feature set through its manifest: ids and arrays checked against it; with ``image_list_hash``,
    refused when the data folder's images are no longer the ones the features were computed on."""
    manifest = _features_manifest(out_dir)
    if image_list_hash is not None and manifest["image_list_hash"] != image_list_hash:
        raise KitError(f"features in {out_dir} were computed on other images than the data folder now holds; "
                       f"{features_advice(out_dir, manifest)}")
    again = features_advice(out_dir, manifest, force=True)
    ids_path = out_dir / "ids.json"
    ids = read_json(ids_path) if ids_path.exists() else None
    if ids is None or sha256_json(ids) != manifest["ids_sha256"]:
        raise KitError(f"{ids_path} does not match its manifest; {again}")
    arrays = {}
    for logical in feature_array_files(manifest["tta"], feature_views(manifest)):
        path = feature_array_path(out_dir, logical)
        try:
            arr = load_npy(path)
        except KitError as exc:
            raise KitError(f"{exc}; {again}") from None
        if list(arr.shape) != manifest["shapes"].get(logical) or arr.dtype != np.float32:
            raise KitError(f"{path} has shape {arr.shape} {arr.dtype}, manifest says {manifest['shapes'].get(logical)}"
                           f" float32; {again}")
        arrays[logical] = arr
    return FeatureSet(path=out_dir, manifest=manifest, arrays=arrays, train_ids=tuple(ids["train_ids"]),
                      y=np.asarray(ids["train_labels"], dtype=np.int8), test_ids=tuple(ids["test_ids"]))


def cached_feature_set(out_dir: Path, key: str) -> FeatureSet | None:
    """The finished feature set in ``out_dir`` if it was made with ``key`` and is whole, else None."""
    if not (out_dir / MANIFEST).exists():
        return None
    try:
        features = load_features(out_dir)
    except KitError:
        return None  # damaged: recomputed, never trusted
    return features if features.key == key else None


def begin_feature_set(out_dir: Path) -> None:
    """Drop the manifest before any array of ``out_dir`` is replaced (a crash then leaves nothing finished)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)


def finish_feature_set(out_dir: Path, dataset: Dataset, *, key: str, image_list_hash: str, width: int, tta: str,
                       views: Sequence[str] = (), unreadable: Mapping[str, Sequence[str]], backbone: str,
                       weights: str, weights_kind: str,
                       preprocess: str | None, input_size: int | None, weights_path: Path | str | None = None,
                       decoder: str | None = None, engine: str | None = None, cluster: ClusterRun | None = None,
                       layer: str | None = None, pool: str = DEFAULT_POOL,
                       details: Mapping[str, Any] | None = None) -> FeatureSet:
    """Write ``ids.json`` then ``manifest.json`` beside arrays already in place; return the loaded set.

    ``unreadable`` maps 'train'/'test' to the relative files that could not be decoded (the manifest keeps
    their ids too: blend keeps the training prior for such test rows); ``decoder``: what decoded the images
    (None for features made by another tool; :attr:`FeatureSet.decoder`); ``engine`` what computed them and
    ``cluster`` the Ray engine's figures (:attr:`FeatureSet.engine`, :class:`ClusterRun`); ``details`` are
    figures of the run (images per second, seconds, versions) kept in the manifest as they are.
    ``image_list_hash`` is the data set's as it was when the extraction began (so images changed during it make
    the set stale). ``weights_path``: the local weights file loaded, if any (the report's heatmaps rebuild the
    backbone from it). ``layer``: the layer the features were pooled from (``--layer``), None for the
    backbone's default features (:attr:`FeatureSet.layer`; the key is written only for a layer). ``views``: the
    extra views (:attr:`FeatureSet.views`; the key is written only when there are some). ``pool``: how the maps
    were pooled (:attr:`FeatureSet.pool`; the key is written only when not by their average).
    """
    ids = {"train_ids": list(dataset.train_ids), "train_labels": dataset.y.tolist(), "test_ids": list(dataset.test_ids)}
    write_json_atomic(out_dir / "ids.json", ids)
    bad = {split: set(unreadable[split]) for split in FEATURE_SPLITS}
    unreadable_ids = {
        "train": [i for f, i in zip(dataset.train_files, dataset.train_ids) if f in bad["train"]],
        "test": [i for f, i in zip(dataset.test_files, dataset.test_ids) if f in bad["test"]],
    }
    files = feature_array_files(tta, views)
    fields = dict(
        key=key, name=out_dir.name, tta=tta, width=width, data_dir=str(dataset.root), layout=dataset.layout,
        classes=list(dataset.classes), positive=dataset.positive, image_list_hash=image_list_hash,
        ids_sha256=sha256_json(ids), n_train=dataset.n_train, n_test=dataset.n_test,
        files={**files, "ids": "ids.json"},
        shapes={k: [_rows(k, dataset.n_train, dataset.n_test), width] for k in files},
        unreadable={split: list(unreadable[split]) for split in FEATURE_SPLITS}, unreadable_ids=unreadable_ids,
        backbone=backbone, weights=weights, weights_kind=weights_kind,
        weights_path=str(weights_path) if weights_path is not None else None, preprocess=preprocess,
        input_size=input_size, decoder=decoder, engine=engine, **(cluster.fields() if cluster is not None else {}),
        **({} if layer is None else {"layer": layer}), **({"views": list(views)} if views else {}),
        **({} if pool == DEFAULT_POOL else {"pool": pool}),
    )
    clash = set(details or {}) & set(fields)
    if clash:
        raise ValueError(f"details may not replace the manifest's own keys {sorted(clash)}")
    write_json_atomic(out_dir / MANIFEST, new_manifest(FEATURES_FORMAT, **fields, **(details or {})))
    return load_features(out_dir)


def save_feature_set(out_dir: Path, dataset: Dataset, arrays: Mapping[str, np.ndarray], *, key: str,
                     image_list_hash: str, backbone: str,
                     weights: str, weights_kind: str, preprocess: str | None = None, input_size: int | None = None,
                     weights_path: Path | str | None = None, unreadable: Mapping[str, Sequence[str]] | None = None,
                     details: Mapping[str, Any] | None = None) -> FeatureSet:
    """Write a whole feature set from arrays in memory: 'train' (n_train, width), 'test' (n_test, width), and
    optionally 'train_flip'/'test_flip' and extra views' ('train_zoom', ...: :func:`feature_array_files`), rows in
    ``dataset``'s order (see :func:`finish_feature_set`)."""
    from kaggle_kit.views import check_views

    tta = "flip" if "train_flip" in arrays else "none"
    extra = [k[len("train_"):] for k in arrays if k.startswith("train_") and not k.endswith("flip")]
    views = check_views(extra)
    if set(arrays) != set(feature_array_files(tta, views)):
        raise KitError(f"feature arrays must be {sorted(feature_array_files(tta, views))}, got {sorted(arrays)}")
    width = arrays["train"].shape[1]
    for logical, arr in arrays.items():
        rows = _rows(logical, dataset.n_train, dataset.n_test)
        if arr.shape != (rows, width):
            raise KitError(f"feature array {logical!r} has shape {arr.shape}, expected ({rows}, {width})")
    begin_feature_set(out_dir)
    for logical, arr in arrays.items():
        save_npy_atomic(feature_array_path(out_dir, logical), np.asarray(arr, dtype=np.float32))
    return finish_feature_set(out_dir, dataset, key=key, image_list_hash=image_list_hash, width=width, tta=tta,
                              views=views, unreadable=unreadable or {"train": [], "test": []}, backbone=backbone,
                              weights=weights, weights_kind=weights_kind, weights_path=weights_path,
                              preprocess=preprocess, input_size=input_size, details=details)


def _check_features(exp_dir: Path, model_dir: Path, feature_keys: Mapping[str, str], *,
                    advice: str) -> frozenset[str] | None:
    """Refuse a model fitted on feature sets that were extracted again since (``advice``: what to do).

    Returns the ids of the test images its feature sets could not decode, or None when that is not known (a
    feature set removed since: the model's own result is still whole, so it is used).
    """
    prior: set[str] | None = set()
    for name, key in feature_keys.items():
        out_dir = features_dir(exp_dir, name)
        if not (out_dir / MANIFEST).exists():
            prior = None
            continue
        manifest = _features_manifest(out_dir)
        if manifest["key"] != key:
            raise KitError(f"the features '{name}' changed after {model_dir} was fitted on them; {advice}")
        if prior is not None:
            prior |= set(manifest["unreadable_ids"]["test"])
    return frozenset(prior) if prior is not None else None


# --------------------------------------------------------------------------------------------------- folds
FOLDS_FORMAT = "kaggle-kit/folds/1"
_FOLDS_KEYS = ("n_folds", "repeats", "seed", "n_train", "n_test", "plan_sha256", "y_sha256", "ids_sha256")


def folds_dir(exp_dir: Path) -> Path:
    return exp_dir / "folds"


def plan_ids_sha256(train_ids: Sequence[str], test_ids: Sequence[str]) -> str:
    """The hash of the plan's ``ids.json``."""
    return sha256_json({"train_ids": list(train_ids), "test_ids": list(test_ids)})


@dataclass(frozen=True)
class FoldPlan:
    """A fold plan: ``plan`` int (repeats, n_train) the fold of each row per repeat (-1: a row left out),
    ``y`` int8 (n_train,), the ids in the kit's fixed row order (``test_ids`` is the submission order), and the
    manifest."""

    plan: np.ndarray
    y: np.ndarray
    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        """The plan's hash: every cv result and blend records the one it was made on."""
        return self.manifest["plan_sha256"]

    @property
    def n_folds(self) -> int:
        return self.manifest["n_folds"]

    @property
    def repeats(self) -> int:
        return self.manifest["repeats"]

    @property
    def seed(self) -> int:
        return self.manifest["seed"]

    @property
    def n_train(self) -> int:
        return self.manifest["n_train"]

    @property
    def n_test(self) -> int:
        return self.manifest["n_test"]

    @property
    def groups(self) -> str | None:
        """The ``--groups`` pattern of a group-wise plan, None for a plan by row (and plans made before groups)."""
        return self.manifest.get("groups")

    @property
    def n_groups(self) -> int | None:
        return self.manifest.get("n_groups")

    def describe(self) -> str:
        r = self.repeats
        grouped = f", grouped by --groups {shlex.quote(self.groups)} ({self.n_groups} groups)" if self.groups else ""
        return f"{self.n_folds} folds x {r} repeat{'s' if r > 1 else ''}, seed {self.seed}{grouped}"

    def matches(self, *, y: np.ndarray, train_ids: Sequence[str], test_ids: Sequence[str], n_folds: int,
                repeats: int, seed: int, groups: str | None = None) -> bool:
        """True when this plan was made with these settings for these labels and ids."""
        m = self.manifest
        return ((m["n_folds"], m["repeats"], m["seed"], m.get("groups"), m["y_sha256"], m["ids_sha256"])
                == (n_folds, repeats, seed, groups, sha256_array(np.asarray(y, dtype=np.int8)),
                    plan_ids_sha256(train_ids, test_ids)))


def load_plan(exp_dir: Path) -> FoldPlan:
    """Load ``<exp>/folds/``, checking every file against the manifest and the manifest's shapes."""
    out = folds_dir(exp_dir)
    rerun = command(exp_dir, "cv")
    manifest = _read(out / MANIFEST, FOLDS_FORMAT, _FOLDS_KEYS, rerun=rerun)
    plan = np.asarray(load_npy(out / "plan.npy", mmap=False, rerun=rerun))
    y = np.asarray(load_npy(out / "y.npy", mmap=False, rerun=rerun))
    if not (out / "ids.json").exists():
        raise KitError(f"{out / 'ids.json'} does not exist; re-run '{rerun}'")
    ids = read_json(out / "ids.json")
    if (sha256_array(plan) != manifest["plan_sha256"] or sha256_array(y) != manifest["y_sha256"]
            or sha256_json(ids) != manifest["ids_sha256"]):
        raise KitError(f"the files in {out} do not match its manifest (an interrupted write?); re-run '{rerun}'")
    # The hashes only prove the files are the ones the manifest was written with; these prove they fit it.
    problems = _plan_problems(manifest, plan, y, ids)
    if problems:
        raise KitError(f"{out}: {'; '.join(problems)}; re-run '{rerun}'")
    return FoldPlan(plan=plan, y=y.astype(np.int8), train_ids=tuple(map(str, ids["train_ids"])),
                    test_ids=tuple(map(str, ids["test_ids"])), manifest=manifest)


def _plan_problems(manifest: dict[str, Any], plan: np.ndarray, y: np.ndarray, ids: Any) -> list[str]:
    """What in the plan, labels and ids disagrees with the manifest's n_folds, repeats, n_train and n_test."""
    n_train, n_test = manifest["n_train"], manifest["n_test"]
    repeats, n_folds = manifest["repeats"], manifest["n_folds"]
    problems = []
    if plan.shape != (repeats, n_train) or plan.dtype.kind not in "iu":
        problems.append(f"plan.npy is {plan.dtype} {plan.shape}, expected integers ({repeats}, {n_train})")
    elif plan.size and (plan.min() < -1 or plan.max() >= n_folds):
        problems.append(f"plan.npy holds folds outside 0..{n_folds - 1} (and -1 for rows left out)")
    if y.shape != (n_train,) or not np.isin(y, (0, 1)).all():
        problems.append(f"y.npy is {y.shape}, expected ({n_train},) of 0/1 labels")
    if (not isinstance(ids, dict) or len(ids.get("train_ids", ())) != n_train
            or len(ids.get("test_ids", ())) != n_test):
        problems.append(f"ids.json does not hold {n_train} train_ids and {n_test} test_ids")
    return problems


def has_plan(exp_dir: Path) -> bool:
    return (folds_dir(exp_dir) / MANIFEST).exists()


def write_plan(exp_dir: Path, *, plan: np.ndarray, y: np.ndarray, train_ids: Sequence[str],
               test_ids: Sequence[str], n_folds: int, repeats: int, seed: int, groups: str | None = None,
               n_groups: int | None = None) -> FoldPlan:
    """Write ``<exp>/folds/`` (replacing any plan there) and return it as loaded.

    ``plan`` int8 (repeats, n_train) from :func:`kaggle_kit.folds.make_plan`; ``y`` (n_train,) 0/1; ``groups``
    the ``--groups`` pattern of a group-wise plan and ``n_groups`` the groups it found (manifest keys written
    only for such a plan, so plans by row keep their old manifest).
    """
    y = np.asarray(y, dtype=np.int8)
    if plan.shape != (repeats, len(y)) or len(train_ids) != len(y):
        raise ValueError(f"plan {plan.shape}, y {y.shape} and {len(train_ids)} train ids disagree")
    out = folds_dir(exp_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    save_npy_atomic(out / "plan.npy", plan)
    save_npy_atomic(out / "y.npy", y)
    ids = {"train_ids": list(train_ids), "test_ids": list(test_ids)}
    write_json_atomic(out / "ids.json", ids)
    manifest = new_manifest(FOLDS_FORMAT, n_folds=n_folds, repeats=repeats, seed=seed,
                            y_sha256=sha256_array(y), ids_sha256=sha256_json(ids), n_train=len(y),
                            n_test=len(test_ids), plan_sha256=sha256_array(plan),
                            **({"groups": groups, "n_groups": n_groups} if groups is not None else {}))
    write_json_atomic(out / MANIFEST, manifest)
    return FoldPlan(plan=plan, y=y, train_ids=tuple(ids["train_ids"]), test_ids=tuple(ids["test_ids"]),
                    manifest=manifest)


# ------------------------------------------------------------------------------------------------------ cv
CV_FORMAT = "kaggle-kit/cv/1"
CONCAT_MODEL = "concat"
PSEUDO_SUFFIX = "_pl"  # a model fitted with pseudo-labels: <model>_pl, head <head>_pl
_CV_KEYS = ("model", "head", "features", "feature_keys", "plan_sha256", "key", "scores", "seconds", "n_train",
            "n_test")
_SCORE_KEYS = ("oof_logloss", "oof_accuracy")


def oof_key(metric: str) -> str:
    """The key of a cross-fitted OOF score in ``metric``: ``oof_<metric>``, in a cv result's scores and in each
    step of the blend's ladder."""
    return f"oof_{metric}"


def cv_root(exp_dir: Path) -> Path:
    """The folder of the experiment's models."""
    return exp_dir / "cv"


def cv_dir(exp_dir: Path, model: str) -> Path:
    return cv_root(exp_dir) / check_name("model", model)


def model_name(feature_set: str, head: str) -> str:
    """A model's name and folder: ``<feature set>__<head>``, or ``concat__<head>`` on several feature sets."""
    return f"{feature_set}__{head}"


def concat_head_option(head: str) -> str:
    """The ``--head`` choice that fits ``head`` on feature sets side by side: 'concat' (logreg), 'concat_<head>'."""
    return "concat" if head == "logreg" else f"concat_{head}"


def pseudo_twin(name: str) -> str:
    """The pseudo-labelling twin (``kaggle-kit cv --pseudo``) of a head or a model: 'logreg' -> 'logreg_pl',
    'squeezenet__logreg' -> 'squeezenet__logreg_pl' (a model's name ends with its head, so the twin's name is
    :func:`model_name` of the twin head)."""
    return name + PSEUDO_SUFFIX


def cv_command(exp_dir: Path, *, model: str, head: str, features: Sequence[str]) -> str:
    """The command that recomputes one model (with ``--pseudo`` for a pseudo-labelling twin)."""
    pseudo = head.endswith(PSEUDO_SUFFIX)
    plain = head.removesuffix(PSEUDO_SUFFIX)
    option = concat_head_option(plain) if model == model_name(CONCAT_MODEL, head) else plain
    return command(exp_dir, "cv", *(a for f in features for a in ("--backbone", f)), "--head", option,
                   *(["--pseudo"] if pseudo else []))


@dataclass(frozen=True)
class CvResult:
    """A finished model: ``oof`` float32 (repeats, n_train), ``test`` float32 (n_test,), its manifest, and
    ``prior_test_ids``: the test images its feature sets could not decode (it gave them the training prior),
    or None when that is not known."""

    model: str
    manifest: dict[str, Any]
    oof: np.ndarray
    test: np.ndarray
    prior_test_ids: frozenset[str] | None = None
    cached: bool = False

    @property
    def head(self) -> str:
        return self.manifest["head"]

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.manifest["features"])

    @property
    def key(self) -> str:
        """Hash of everything the result depends on (feature keys, plan, settings): equal keys, same result."""
        return self.manifest["key"]

    @property
    def plan_sha256(self) -> str:
        return self.manifest["plan_sha256"]

    @property
    def scores(self) -> dict[str, Any]:
        return self.manifest["scores"]

    @property
    def oof_logloss(self) -> float:
        return self.manifest["scores"]["oof_logloss"]

    @property
    def oof_accuracy(self) -> float:
        return self.manifest["scores"]["oof_accuracy"]

    def score(self, metric: str) -> float | None:
        """The cross-fitted OOF score in ``metric`` (``oof_<metric>``), None when undefined or not recorded
        (results made before the metric was scored)."""
        value = self.manifest["scores"].get(oof_key(metric))
        return None if value is None else float(value)

    @property
    def seconds(self) -> float:
        return self.manifest["seconds"]

    @property
    def params(self) -> dict[str, Any]:
        return self.manifest["params"]

    @property
    def tta_train(self) -> bool:
        """Whether the head was fitted on the flipped copies of the training rows too."""
        return bool(self.manifest.get("tta_train"))

    @property
    def tta_predict(self) -> bool:
        """Whether each prediction is the mean over the photo and its flipped copy."""
        return bool(self.manifest.get("tta_predict"))

    @property
    def sha256(self) -> str:
        """Hash of the manifest: a blend records it, and is stale when the model is recomputed."""
        return sha256_json(self.manifest)


def _cv_array_problems(oof: np.ndarray, test: np.ndarray, plan: FoldPlan) -> list[str]:
    shape = (plan.repeats, plan.n_train)
    problems = []
    if oof.shape != shape or oof.dtype != np.float32:
        problems.append(f"oof.npy is {oof.dtype} {oof.shape}, but the experiment has {shape[0]} repeat(s) of "
                        f"{shape[1]} training images (float32)")
    if test.shape != (plan.n_test,) or test.dtype != np.float32:
        problems.append(f"test.npy is {test.dtype} {test.shape}, but the experiment has {plan.n_test} test images "
                        "(float32)")
    for name, arr in (("oof.npy", oof), ("test.npy", test)):
        if not problems and (np.isinf(arr).any() or ((arr < 0) | (arr > 1)).any()):  # NaN compares False: allowed
            problems.append(f"{name} holds values outside [0, 1]")
    return problems


def write_cv_result(exp_dir: Path, model: str, *, plan: FoldPlan, oof: np.ndarray, test: np.ndarray, head: str,
                    features: Sequence[str], feature_keys: Mapping[str, str], key: str, params: Mapping[str, Any],
                    tta_train: bool, tta_predict: bool, scores: Mapping[str, Any], seconds: float,
                    n_excluded_train: int, n_excluded_test: int) -> CvResult:
    """Write ``<exp>/cv/<model>/``: ``oof`` float32 (repeats, n_train) and ``test`` float32 (n_test,) P(positive)
    on ``plan``, made from the feature sets ``features`` (their keys in ``feature_keys``) with ``head``."""
    oof, test = np.asarray(oof, dtype=np.float32), np.asarray(test, dtype=np.float32)
    problems = _cv_array_problems(oof, test, plan) + [f"scores lack {k}" for k in _SCORE_KEYS if k not in scores]
    if problems:
        raise ValueError(f"cv result {model}: {'; '.join(problems)}")
    out = cv_dir(exp_dir, model)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    save_npy_atomic(out / "oof.npy", oof)
    save_npy_atomic(out / "test.npy", test)
    manifest = new_manifest(
        CV_FORMAT, model=model, head=head, features=list(features), feature_keys=dict(feature_keys),
        plan_sha256=plan.sha256, key=key, params=dict(params), tta_train=tta_train, tta_predict=tta_predict,
        test_average="probability", scores=dict(scores), seconds=seconds, n_excluded_train=n_excluded_train,
        n_excluded_test=n_excluded_test, n_train=plan.n_train, n_test=plan.n_test,
    )
    write_json_atomic(out / MANIFEST, manifest)
    return CvResult(model=model, manifest=manifest, oof=oof, test=test)


def _cv_manifest(exp_dir: Path, model: str) -> dict[str, Any]:
    out = cv_dir(exp_dir, model)
    manifest = _read(out / MANIFEST, CV_FORMAT, _CV_KEYS, rerun=command(exp_dir, "cv"))
    missing = [k for k in _SCORE_KEYS if k not in manifest["scores"]]
    if manifest["model"] != model or missing:
        raise KitError(f"{out / MANIFEST} is not the manifest of model '{model}' with its scores; re-run "
                       f"'{command(exp_dir, 'cv')}'")
    return manifest


def load_cv_result(exp_dir: Path, model: str, *, plan: FoldPlan | None = None) -> CvResult:
    """Load ``<exp>/cv/<model>/``, refusing a result made on another fold plan than the current one or on
    feature sets extracted again since, and arrays that do not fit the plan or hold values outside [0, 1]."""
    plan = load_plan(exp_dir) if plan is None else plan
    out = cv_dir(exp_dir, model)
    manifest = _cv_manifest(exp_dir, model)
    rerun = cv_command(exp_dir, model=model, head=manifest["head"], features=manifest["features"])
    if manifest["plan_sha256"] != plan.sha256:
        raise KitError(f"{out} was fitted on another fold plan than the current one in {folds_dir(exp_dir)} "
                       f"({plan.describe()}); re-run '{rerun}'")
    prior = _check_features(exp_dir, out, manifest["feature_keys"], advice=f"re-run '{rerun}'")
    oof, test = load_npy(out / "oof.npy", rerun=rerun), load_npy(out / "test.npy", rerun=rerun)
    problems = _cv_array_problems(oof, test, plan)
    if problems:
        raise KitError(f"{out}: {'; '.join(problems)}; re-run '{rerun}'")
    return CvResult(model=model, manifest=manifest, oof=oof, test=test, prior_test_ids=prior)


def load_cv_results(exp_dir: Path, models: Sequence[str] | None = None, *, plan: FoldPlan | None = None,
                    warn: Callable[[str], None] = print) -> dict[str, CvResult]:
    """The named models (default: every finished one, sorted), each loaded by :func:`load_cv_result`.

    A model folder without a manifest is an unfinished cv run: it is left out with a warning.
    """
    plan = load_plan(exp_dir) if plan is None else plan
    if models is None:
        root = cv_root(exp_dir)
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []
        for folder in folders:
            if not (folder / MANIFEST).exists():
                warn(f"warning: {folder} has no manifest.json (an unfinished cv run); it is left out")
        models = [p.name for p in folders if (p / MANIFEST).exists()]
        if not models:
            raise KitError(f"no finished cv results in {root}; run '{command(exp_dir, 'cv')}' first")
    return {m: load_cv_result(exp_dir, m, plan=plan) for m in models}


def cached_cv_result(exp_dir: Path, model: str, *, key: str, plan: FoldPlan) -> CvResult | None:
    """The finished result of ``model`` if it was made with ``key`` and is whole and current, else None."""
    if not (cv_dir(exp_dir, model) / MANIFEST).exists():
        return None
    try:
        result = load_cv_result(exp_dir, model, plan=plan)
    except KitError:
        return None  # damaged or stale: recomputed
    return replace(result, cached=True) if result.key == key else None


def stale_cv_models(exp_dir: Path, plan: FoldPlan) -> list[str]:
    """The finished models on disk that were made on another plan than ``plan`` (blend refuses them)."""
    stale = []
    for model in _finished(cv_root(exp_dir)):
        try:
            manifest = _cv_manifest(exp_dir, model)
        except KitError:
            continue
        if manifest["plan_sha256"] != plan.sha256:
            stale.append(model)
    return stale


# --------------------------------------------------------------------------------------------------- blend
BLEND_FORMAT = "kaggle-kit/blend/2"
_BLEND_KEYS = ("method", "method_scores", "models", "weights", "intercept", "rounds", "calibration", "ladder",
               "clip", "n_train", "n_test", "n_scored", "n_test_prior", "n_folds", "repeats", "plan_sha256",
               "inputs", "shapes")
_BLEND_ARRAYS = ("oof", "oof_uncalibrated", "test")
_OLD_BLEND_METRIC = "logloss"  # blends written before the manifest named its metric were made for log loss


def blend_dir(exp_dir: Path) -> Path:
    return exp_dir / "blend"


@dataclass(frozen=True)
class LadderStep:
    """One rung of the blend's ladder: the step, its cross-fitted OOF score in the blend's metric (kept in the
    manifest as ``oof_<metric>``), and what it did."""

    step: str
    score: float
    detail: str


def _json_scores(scores: Mapping[str, float]) -> dict[str, float | None]:
    """Scores for JSON: an unusable candidate's inf becomes null (JSON has no infinity)."""
    return {k: (float(v) if math.isfinite(v) else None) for k, v in scores.items()}


@dataclass(frozen=True)
class BlendRecord:
    """A finished blend: ``oof`` and ``oof_uncalibrated`` float32 (n_train,) cross-fitted OOF predictions after
    and before calibration (NaN on rows left out), ``test`` float32 (n_test,) calibrated and unclipped in
    ``test_ids`` order, and the manifest's settings and scores (in :attr:`metric`) as attributes."""

    path: Path
    manifest: dict[str, Any]
    oof: np.ndarray
    oof_uncalibrated: np.ndarray
    test: np.ndarray
    test_ids: tuple[str, ...]

    @property
    def metric(self) -> str:
        """The metric the blend was made for (log loss in blends made before the metric was a choice)."""
        return self.manifest.get("metric", _OLD_BLEND_METRIC)

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def method_scores(self) -> dict[str, float | None]:
        """Cross-fitted OOF score (in :attr:`metric`) of each blending method (None: unusable)."""
        return self.manifest["method_scores"]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.manifest["models"])

    @property
    def weights(self) -> dict[str, float]:
        """Each model's weight (for 'stack', its coefficient on the logit)."""
        return self.manifest["weights"]

    @property
    def intercept(self) -> float | None:
        return self.manifest["intercept"]

    @property
    def rounds(self) -> int:
        return self.manifest["rounds"]

    @property
    def calibration(self) -> str:
        return self.manifest["calibration"]["kind"]

    @property
    def calibration_params(self) -> dict[str, float]:
        return self.manifest["calibration"]["params"]

    @property
    def calibration_scores(self) -> dict[str, float | None]:
        """Cross-fitted OOF log loss of each calibration (empty for AUC: none is fitted)."""
        return self.manifest["calibration"]["scores"]

    @property
    def ladder(self) -> tuple[LadderStep, ...]:
        key = oof_key(self.metric)
        return tuple(LadderStep(s["step"], s[key], s["detail"]) for s in self.manifest["ladder"])

    @property
    def clip(self) -> float | None:
        """The clip level chosen on the OOF predictions, applied by submit; None for a blend made for another
        metric than log loss (no clip was chosen)."""
        clip = self.manifest["clip"]
        return None if clip is None else clip["chosen"]

    @property
    def clip_logloss(self) -> float | None:
        clip = self.manifest["clip"]
        return None if clip is None else clip["oof_logloss"]

    @property
    def n_train(self) -> int:
        return self.manifest["n_train"]

    @property
    def n_scored(self) -> int:
        return self.manifest["n_scored"]

    @property
    def n_test_prior(self) -> int:
        return self.manifest["n_test_prior"]

    @property
    def n_folds(self) -> int:
        return self.manifest["n_folds"]

    @property
    def repeats(self) -> int:
        return self.manifest["repeats"]


def write_blend(exp_dir: Path, *, plan: FoldPlan, inputs: Mapping[str, CvResult], oof: np.ndarray,
                oof_uncalibrated: np.ndarray, test: np.ndarray, metric: str, method: str,
                method_scores: Mapping[str, float], weights: Mapping[str, float], intercept: float | None,
                rounds: int, calibration: str, calibration_params: Mapping[str, float],
                calibration_scores: Mapping[str, float], ladder: Sequence[LadderStep], clip: float | None,
                clip_logloss: float | None, clip_bounds: Sequence[float], n_scored: int,
                n_test_prior: int) -> BlendRecord:
    """Write ``<exp>/blend/`` from the blend of the cv results ``inputs`` on ``plan``; return it as loaded.

    ``oof``/``oof_uncalibrated`` (n_train,) and ``test`` (n_test,) probabilities (for a 'rank' blend, scores in
    [0, 1] that order the rows); ``method_scores`` and the ladder's scores are in ``metric`` (the ladder's kept
    as ``oof_<metric>``); ``clip`` None (written as null) when no clip was chosen (metrics other than log
    loss). Scores given as inf (an unusable candidate) are written as null.
    """
    arrays = {"oof": oof, "oof_uncalibrated": oof_uncalibrated, "test": test}
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    shapes = {"oof": [plan.n_train], "oof_uncalibrated": [plan.n_train], "test": [plan.n_test]}
    wrong = [k for k, v in arrays.items() if list(v.shape) != shapes[k]]
    if wrong:
        raise ValueError(f"blend arrays {wrong} do not fit the plan's {plan.n_train} train / {plan.n_test} test rows")
    out = blend_dir(exp_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    for name, arr in arrays.items():
        save_npy_atomic(out / f"{name}.npy", arr)
    manifest = new_manifest(
        BLEND_FORMAT,
        metric=metric,
        method=method,
        method_scores=_json_scores(method_scores),
        models=list(inputs),
        weights={m: float(w) for m, w in weights.items()},
        intercept=intercept,
        rounds=rounds,
        calibration={"kind": calibration, "params": dict(calibration_params),
                     "scores": _json_scores(calibration_scores)},
        ladder=[{"step": s.step, oof_key(metric): s.score, "detail": s.detail} for s in ladder],
        clip=None if clip is None else {"chosen": clip, "oof_logloss": clip_logloss, "bounds": list(clip_bounds)},
        n_train=plan.n_train,
        n_test=plan.n_test,
        n_scored=n_scored,
        n_test_prior=n_test_prior,
        n_folds=plan.n_folds,
        repeats=plan.repeats,
        plan_sha256=plan.sha256,
        inputs={"cv": {m: r.sha256 for m, r in inputs.items()}},
        shapes=shapes,
    )
    write_json_atomic(out / MANIFEST, manifest)
    return BlendRecord(path=out, manifest=manifest, test_ids=plan.test_ids, **arrays)


def load_blend(exp_dir: Path) -> BlendRecord:
    """Load ``<exp>/blend/``, refusing a blend made on another fold plan, from cv results recomputed since or
    on feature sets extracted again since, and arrays that do not fit the plan."""
    out = blend_dir(exp_dir)
    rerun = command(exp_dir, "blend")
    manifest = _read(out / MANIFEST, BLEND_FORMAT, _BLEND_KEYS, rerun=rerun)
    metric = manifest.get("metric", _OLD_BLEND_METRIC)
    if metric not in METRICS or not all(isinstance(s, dict) and oof_key(metric) in s
                                           for s in manifest["ladder"]):
        raise KitError(f"{out / MANIFEST} does not hold a ladder scored in a known metric (its metric: "
                       f"{metric!r}); re-run '{rerun}'")
    plan = load_plan(exp_dir)
    if manifest["plan_sha256"] != plan.sha256:
        raise KitError(f"{out} was made on another fold plan; re-run '{rerun}'")
    for model, digest in manifest["inputs"]["cv"].items():
        path = cv_dir(exp_dir, model) / MANIFEST
        current = _cv_manifest(exp_dir, model) if path.exists() else None
        if current is None or sha256_json(current) != digest:
            raise KitError(f"the cv results of '{model}' changed since {out} was made; re-run '{rerun}'")
        again = cv_command(exp_dir, model=model, head=current["head"], features=current["features"])
        _check_features(exp_dir, path.parent, current["feature_keys"], advice=f"re-run '{again}', then '{rerun}'")
    arrays = {}
    for name in _BLEND_ARRAYS:
        arr = np.asarray(load_npy(out / f"{name}.npy", mmap=False, rerun=rerun))
        expected = (plan.n_train,) if name.startswith("oof") else (plan.n_test,)
        if arr.shape != expected or arr.dtype != np.float32:
            raise KitError(f"{out / f'{name}.npy'} is {arr.dtype} {arr.shape}, expected float32 {expected}; "
                           f"re-run '{rerun}'")
        arrays[name] = arr
    return BlendRecord(path=out, manifest=manifest, test_ids=plan.test_ids, **arrays)


def has_blend(exp_dir: Path) -> bool:
    return (blend_dir(exp_dir) / MANIFEST).exists()


# -------------------------------------------------------------------------------------------------- report
MISTAKES_CSV = "mistakes.csv"  # in <exp>/report/: every OOF mistake of the report


def report_page(exp_dir: Path) -> Path:
    return exp_dir / "report.html"


def write_report_files(exp_dir: Path, *, page: str, plots: Mapping[str, bytes],
                       mistakes: pd.DataFrame) -> tuple[Path, tuple[Path, ...], Path]:
    """Write each plot as ``<exp>/report/<name>.png``, the OOF mistakes as ``<exp>/report/mistakes.csv`` (the
    report's columns, probabilities and losses with 6 decimals), then the page ``<exp>/report.html``; return the
    page's, the plots' and the list's paths."""
    paths = tuple(exp_dir / "report" / f"{name}.png" for name in plots)
    for path, png in zip(paths, plots.values()):
        write_bytes_atomic(path, png)
    listed = exp_dir / "report" / MISTAKES_CSV
    with atomic_path(listed, suffix=".csv") as tmp:
        mistakes.to_csv(tmp, index=False, float_format="%.6f", lineterminator="\n")
    write_bytes_atomic(report_page(exp_dir), page.encode("utf-8"))
    return report_page(exp_dir), paths, listed


# -------------------------------------------------------------------------------- read-only views for status
# Used by ``kaggle-kit status`` (kaggle_kit/status.py). Each reads what a loader above reads, with the same
# checks, but where the loader refuses a stale result these return it with the reason it is stale, so status
# can show it. They never write and take no lock.

def recorded_metric(exp_dir: Path) -> str | None:
    """The competition metric ``experiment.json`` records (key ``metric``), or None when it records none."""
    path = exp_dir / "experiment.json"
    manifest = read_json(path) if path.is_file() else None
    metric = manifest.get("metric") if isinstance(manifest, dict) else None
    return metric if isinstance(metric, str) else None


def finished_folders(root: Path) -> list[str]:
    """Names of the folders in ``root`` that hold a manifest (finished results), sorted."""
    return _finished(root)


def features_rerun(out_dir: Path) -> str | None:
    """The command that makes the feature set in ``out_dir`` again (or resumes its extraction): from its
    manifest where that can be read, else from the folder's name; None for features made by another tool."""
    try:
        manifest = read_manifest(out_dir / MANIFEST, fmt=FEATURES_FORMAT, rerun="kaggle-kit features")
    except (KitError, FileNotFoundError):
        manifest = None
    if manifest is not None and manifest.get("weights_kind") == EXTERNAL_WEIGHTS:
        return None
    return features_command(out_dir, manifest)


def unfinished_folders(root: Path) -> list[str]:
    """Names of the folders in ``root`` without a manifest (work a killed or running command left), sorted."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and not (p / MANIFEST).is_file())


def features_stale_reason(features: FeatureSet, image_list_hash: str) -> str | None:
    """Why ``features`` is stale for a data folder whose images hash to ``image_list_hash`` (None: current)."""
    if features.manifest["image_list_hash"] != image_list_hash:
        return "computed on other images than the data folder now holds"
    return None


def inspect_cv_result(exp_dir: Path, model: str, *, plan: FoldPlan | None) -> tuple[CvResult, str | None]:
    """``<exp>/cv/<model>/`` and why it is stale (None: current, and then loaded by :func:`load_cv_result` with
    every check); a stale result's arrays are memory-mapped as they are. ``plan`` None: the experiment has no
    readable plan. Raises KitError when the result cannot be read."""
    out = cv_dir(exp_dir, model)
    manifest = _cv_manifest(exp_dir, model)
    rerun = cv_command(exp_dir, model=model, head=manifest["head"], features=manifest["features"])
    reason = None
    if plan is None:
        reason = "the fold plan it was made on is gone"
    elif manifest["plan_sha256"] != plan.sha256:
        reason = f"made on another fold plan than the current one ({plan.describe()})"
    else:
        for name, key in manifest["feature_keys"].items():
            if not (features_dir(exp_dir, name) / MANIFEST).exists():
                continue  # removed since: the result is still whole (as load_cv_result has it)
            try:
                current = _features_manifest(features_dir(exp_dir, name))["key"]
            except KitError:
                reason = f"its features '{name}' cannot be read"
                break
            if current != key:
                reason = f"its features '{name}' were extracted again since"
                break
    if reason is None:
        return load_cv_result(exp_dir, model, plan=plan), None
    oof, test = load_npy(out / "oof.npy", rerun=rerun), load_npy(out / "test.npy", rerun=rerun)
    return CvResult(model=model, manifest=manifest, oof=oof, test=test), reason


def inspect_blend(exp_dir: Path, *, plan: FoldPlan | None,
                  current: Mapping[str, CvResult]) -> tuple[BlendRecord, str | None]:
    """``<exp>/blend/`` and why it is stale (None: current, and then loaded by :func:`load_blend` with every
    check): made on another plan, or from cv results other than ``current`` (the finished models that are
    themselves current; a model added since counts too). Raises KitError when the blend cannot be read."""
    out = blend_dir(exp_dir)
    rerun = command(exp_dir, "blend")
    manifest = _read(out / MANIFEST, BLEND_FORMAT, _BLEND_KEYS, rerun=rerun)
    inputs = manifest["inputs"]["cv"]
    changed = [m for m, digest in inputs.items() if m not in current or current[m].sha256 != digest]
    added = [m for m in current if m not in inputs]
    reason = None
    if plan is None or manifest["plan_sha256"] != plan.sha256:
        reason = "made on another fold plan than the current one"
    elif changed:
        reason = f"made from cv results that changed or went stale since: {', '.join(changed)}"
    elif added:
        reason = f"made before these cv models: {', '.join(added)}"
    if reason is None:
        return load_blend(exp_dir), None
    arrays = {name: load_npy(out / f"{name}.npy", rerun=rerun) for name in _BLEND_ARRAYS}
    return BlendRecord(path=out, manifest=manifest, test_ids=plan.test_ids if plan else (), **arrays), reason
