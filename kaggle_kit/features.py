"""Stage 1: frozen-backbone bottleneck features for every training and test image, cached and resumable.

:func:`run_features` (``kaggle-kit features``) resolves the data folder, the backbone and its weights, holds the
experiment's lock and extracts a feature set (its files and manifest: :mod:`kaggle_kit.store`): 'train' and
'test' float32 (n_train, width) and (n_test, width) in the data set's fixed row order; with ``--tta flip``
also 'train_flip' and 'test_flip', the same rows computed on horizontally flipped images. Later stages use
them as a second view of each image: ``cv`` can train heads on both views (augmentation) and average a model's
predictions over both views (test-time augmentation). ``--views N`` adds N more views of each image (crops of a
larger resize, or quarter turns: :mod:`kaggle_kit.views`), each flipped too under flip TTA, used the same way.
The pixels come from :mod:`kaggle_kit.decoders`
(``--decoder``: OpenCV on CPU threads, or NVIDIA DALI on a GPU); the decoder is part of the cache key.

Extraction is written in shards (``.partial/<key>/<split>-<i>.npz``, each written atomically). A run that is
interrupted (Ctrl-C, SIGKILL) resumes from the finished shards of the same key; the key is a hash of
everything the features depend on, so shards of another configuration or of changed images are never reused.

Two engines compute the shards (:mod:`kaggle_kit.engine`): ``local`` (one model in this process) and ``ray``
(workers on a Ray cluster, :mod:`kaggle_kit.ray_engine`). Both write the same shard files, so assembly,
manifest, cache and resume are shared and a set is the same whichever engine made it (the manifest records
which: ``engine``).

A feature set holds the backbone's default (last-layer) features, or with ``FeatureSettings.layer`` the pooled
output of that layer (``--layer``; manifest field ``layer``, named ``<backbone>[_<size>]-<layer>``). Each map is
average-pooled, or with ``FeatureSettings.pool`` (``--pool max|avgmax``; manifest field ``pool``, the name ending
in ``.<pool>``) max-pooled, or both side by side.
:func:`extract_feature_sets` makes several layers' sets from one decode and one forward pass, on either
engine; only the missing sets are computed, and an interrupted run resumes from its shards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from kaggle_kit.artifacts import KitError, atomic_path, check_name, experiment_lock, sha256_array, sha256_json
from kaggle_kit.backbones import Backbone, WeightsChoice
from kaggle_kit.data import Dataset
from kaggle_kit.decoders import DECODERS
from kaggle_kit.engine import build_predictor, pending_shards, run_local, shard_ranges
from kaggle_kit.store import (
    DEFAULT_POOL,
    EXTERNAL_WEIGHTS,
    FEATURES_FORMAT,
    FeatureSet,
    begin_feature_set,
    cached_feature_set,
    default_feature_set_name,
    experiment_data,
    experiment_metric,
    feature_array_path,
    features_dir,
    finish_feature_set,
    load_shard,
    partial_dir,
    remember_data,
    save_feature_set,
    shard_key,
    shard_path,
)
from kaggle_kit.views import DEFAULT_VIEW_KIND, array_name, view_names, view_suffixes

if TYPE_CHECKING:
    from kaggle_kit.ray_engine import RaySettings

TTA_MODES = ("none", "flip")
ENGINES = ("local", "ray")
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
    decoder: str = "opencv"  # kaggle_kit.decoders.DECODERS
    ray: RaySettings | None = None  # None: the local engine; else the shards run on a Ray cluster (ray_engine.py)
    layer: str | None = None  # None: the backbone's default (last-layer) features; else a layer to pool
    views: tuple[str, ...] = ()  # extra views of each image (kaggle_kit/views.py), each flipped too under flip TTA
    pool: str = DEFAULT_POOL  # how each feature map is pooled (backbones.POOLS): the mean, the maximum, or both

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise KitError(f"unknown decoder {self.decoder!r}; choose one of: {', '.join(DECODERS)}", code=2)

    def key(self, image_list_hash: str) -> str:
        # subtle: the decoder changes pixel values (DALI's resize and nvJPEG differ from OpenCV by about a level
        # per pixel), so it is part of the key; OpenCV's key keeps its old form, so existing caches stay valid.
        decoder = {} if self.decoder == "opencv" else {"decoder": self.decoder}
        layer = {} if self.layer is None else {"layer": self.layer}  # keys of last-layer sets stay as they were
        views = {"views": list(self.views)} if self.views else {}  # so do keys of sets without extra views
        pool = {} if self.pool == DEFAULT_POOL else {"pool": self.pool}  # and of average-pooled sets
        return sha256_json({
            "format": FEATURES_FORMAT,
            "backbone": self.backbone.name,
            "builder": self.backbone.builder,
            "preprocess": self.backbone.preprocess,
            "weights": self.weights.identity,
            "image_size": self.image_size,
            "tta": self.tta,
            "images": image_list_hash,
            **decoder,
            **layer,
            **views,
            **pool,
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
                f"{self._views_summary()}, {rate if rate is not None else '-'} img/s end to end, "
                f"{fs.extract_seconds} s{self._cluster_summary()} -> {self.out_dir}"]

    def _views_summary(self) -> str:
        """' x2 (flip)', ' x8 (flip, rot90, rot180, rot270 and their flips)' or ''."""
        fs = self.features
        count = len(fs.view_suffixes)
        if count == 1:
            return ""
        named = ", ".join(["flip"] * (fs.tta == "flip") + list(fs.views))
        return f" x{count} ({named}{' and their flips' if fs.views and fs.tta == 'flip' else ''})"

    def _cluster_summary(self) -> str:
        cluster = self.features.cluster
        if cluster is None:
            return ""
        restarts = f", {cluster.worker_restarts} restarted" if cluster.worker_restarts else ""
        return (f" on {cluster.workers} Ray worker(s) at {cluster.address}{restarts} (+{cluster.startup_seconds} s "
                "to start them)")


# ------------------------------------------------------------------------------------------- the stage's steps
def _shard_widths(partial: Path, paths: dict[str, list[Path]]) -> list[int]:
    """Each layer's width, as the first shard in ``partial`` records it (for a run whose engine built no model)."""
    split = next((split for split, split_paths in paths.items() if split_paths), None)
    shard = load_shard(shard_path(partial, split, 0)) if split is not None else None
    if shard is None:
        raise KitError(f"no finished shard in {partial} to assemble; run again")
    return [int(w) for w in shard["widths"]]


def _assemble(targets: Sequence[tuple[Path, int]], partial: Path, paths: dict[str, list[Path]], *,
              shard_size: int, tta: str, views: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Stream the shards into the final arrays (memory-mapped, atomic); return the ok mask of each split.

    ``targets``: (feature set folder, its width) per layer, in the order the shards hold the layers' features
    side by side. Each shard is read once; peak memory is one shard, whatever the number of images.
    """
    edges = np.cumsum([0, *(width for _, width in targets)])
    ok_masks = {}
    for split, split_paths in paths.items():
        sources = {shard_key(suffix): array_name(split, suffix) for suffix in view_suffixes(tta == "flip", views)}
        n = len(split_paths)
        with contextlib.ExitStack() as stack:
            outs = []
            for (out_dir, width), lo, hi in zip(targets, edges[:-1], edges[1:]):
                for key, logical in sources.items():
                    tmp = stack.enter_context(atomic_path(feature_array_path(out_dir, logical), suffix=".npy"))
                    memmap = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, width))
                    outs.append((key, slice(int(lo), int(hi)), memmap))
            ok = np.zeros(n, dtype=bool)
            for index, (a, b) in enumerate(shard_ranges(n, shard_size)):
                shard = load_shard(shard_path(partial, split, index))
                if shard is None:
                    raise KitError(f"shard {split}-{index} in {partial} vanished while assembling; run again")
                if shard["feats"].shape[1] != edges[-1]:
                    raise KitError(f"shard {split}-{index} in {partial} holds {shard['feats'].shape[1]} features, "
                                   f"expected {edges[-1]}; run again with --force")
                for key, columns, out in outs:
                    out[a:b] = shard[key][:, columns]
                ok[a:b] = shard["ok"]
            for _, _, out in outs:
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
    interrupted run resumes when the same sets are asked for again. With the local engine the model is built
    before anything is written: an unknown layer is refused without leaving folders behind.
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
            if (cached := cached_feature_set(out_dir, keys[i])) is not None:
                results[i] = FeatureResult(cached, cached=True)
    todo_jobs = [i for i, r in enumerate(results) if r is None]
    if not todo_jobs:
        return results
    layers = tuple(jobs[i][1].layer for i in todo_jobs)
    predictor = None
    if settings.ray is None:
        from kaggle_kit.decoders import check_decoder

        # Before any work: a missing DALI or GPU is a one-line error, not a wait. (Ray workers check their node.)
        check_decoder(settings.decoder)
        predictor = build_predictor(settings.backbone, image_size=settings.image_size, weights=settings.weights,
                                    batch_size=settings.batch_size, layers=layers, pool=settings.pool)

    # One group key for the sets made together; a single set keeps its own key (as before multi-layer runs).
    group = keys[todo_jobs[0]] if len(todo_jobs) == 1 else sha256_json(sorted(keys[i] for i in todo_jobs))
    out_dirs = [jobs[i][0] for i in todo_jobs]
    partial = partial_dir(out_dirs[0]) / group[:16]
    if force and partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    for out_dir in out_dirs:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in partial_dir(out_dir).glob("*"):  # shards of other configurations are never used again
            if stale != partial:
                shutil.rmtree(stale, ignore_errors=True)
        for stale in out_dir.glob(".*.tmp"):  # arrays of a run killed while assembling (as large as the results)
            stale.unlink(missing_ok=True)

    paths = {"train": dataset.train_paths(), "test": dataset.test_paths()}
    total = sum(len(p) for p in paths.values())
    backbone = settings.backbone
    from tqdm import tqdm

    todo = pending_shards(paths, partial, shard_size=settings.shard_size)
    bar = tqdm(total=total, unit="img", desc=f"{backbone.name} features", disable=not progress, smoothing=0.1)
    bar.update(total - sum(b - a for _, _, a, b in todo))  # shards finished by an interrupted run
    if settings.ray is None:
        run = run_local(settings, paths, partial, todo, predictor=predictor, on_images=bar.update)
    else:
        from kaggle_kit.ray_engine import run_on_ray

        run = run_on_ray(settings, paths, partial, todo, data_root=dataset.root, layers=layers,
                         on_images=bar.update)
    bar.close()

    for out_dir in out_dirs:
        begin_feature_set(out_dir)  # the old manifests go before any array is replaced
    widths = run.widths or _shard_widths(partial, paths)  # a resumed Ray run may have started no worker
    if len(widths) != len(out_dirs):
        raise KitError(f"the shards in {partial} hold {len(widths)} layers, not {len(out_dirs)}; run again with "
                       "--force")
    ok = _assemble(list(zip(out_dirs, widths)), partial, paths, shard_size=settings.shard_size, tta=settings.tta,
                   views=settings.views)
    unreadable = {
        "train": [dataset.train_files[i] for i in np.flatnonzero(~ok["train"])],
        "test": [dataset.test_files[i] for i in np.flatnonzero(~ok["test"])],
    }
    for f in unreadable["train"]:
        warn(f"warning: cannot decode {dataset.root / f}; training image skipped")
    for f in unreadable["test"]:
        warn(f"warning: cannot decode {dataset.root / f}; it will get the training prior as its prediction")

    for i, out_dir, width in zip(todo_jobs, out_dirs, widths):
        features = finish_feature_set(
            out_dir, dataset, key=keys[i], image_list_hash=image_hash, width=width, tta=settings.tta,
            views=settings.views, unreadable=unreadable,
            backbone=backbone.name, weights=settings.weights.identity, weights_kind=settings.weights.kind,
            weights_path=settings.weights.path, preprocess=backbone.preprocess, input_size=settings.image_size,
            decoder=settings.decoder, engine=run.engine, cluster=run.cluster, layer=jobs[i][1].layer,
            pool=settings.pool,
            details=dict(
                builder=backbone.builder,
                extracted_with=[d.name for d in out_dirs],  # the sets made in the same pass
                images_computed=run.images,
                images_per_second=round(run.images / run.seconds, 2) if run.images and run.seconds > 0 else None,
                extract_seconds=round(run.seconds, 2),
                build_seconds=run.build_seconds,
                warmup_seconds=run.warmup_seconds,
                batch_size=settings.batch_size,
                keras_backend=run.keras_backend,
                keras_version=run.keras_version,
            ),
        )
        results[i] = FeatureResult(features, cached=False)
    for out_dir in out_dirs:
        shutil.rmtree(partial_dir(out_dir), ignore_errors=True)
    return results


# --------------------------------------------------------------------------------------------- the stage
def run_feature_sets(
    exp_dir: Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    data: Path | None = None,
    weights: str = "imagenet",
    image_size: int | None = None,
    tta: str = "none",
    views: int = 0,
    view_kind: str = DEFAULT_VIEW_KIND,
    pool: str = DEFAULT_POOL,
    positive: str | None = None,
    layout: str | None = None,
    labels: Path | str | None = None,
    id_col: str | None = None,
    target_col: str | None = None,
    metric: str | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    decoder: str = "opencv",
    shard_size: int = 1024,
    engine: str = "local",
    address: str | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
    name: str | None = None,
    layers: Sequence[str] | None = None,
    force: bool = False,
    warn: Callable[[str], None] = print,
    progress: bool = True,
) -> list[FeatureResult]:
    """``kaggle-kit features``: extract (or reuse) one backbone's feature sets for the experiment in ``exp_dir``,
    one per layer of ``layers`` (default: the backbone's default features only), from one pass; one result each.

    ``data`` and how to read it (``positive``, ``layout``, ``labels``, ``id_col``, ``target_col``: see
    :func:`kaggle_kit.data.discover`) default to the experiment's (see :func:`kaggle_kit.store.experiment_data`;
    else ./data, its layout detected), ``metric`` to the experiment's (else log loss); the experiment then
    remembers them all. ``weights`` is 'imagenet', 'none' (random: warned about), a file or a folder holding the
    published file (:func:`kaggle_kit.backbones.resolve_weights`); ``image_size`` defaults to the backbone's own
    and ``name`` to ``<backbone>[_<size>][-<layer>]`` (``name`` names one set only). ``layers``: layer names
    (:func:`kaggle_kit.backbones.cut_layers`; ``last``: the default features), duplicates dropped. ``decoder``
    is one of decoders.DECODERS (a missing DALI or GPU is refused before any model is built). ``engine`` is one of
    :data:`ENGINES`: with 'local', ``workers`` is the number of decoder threads; with 'ray' it is the number of Ray
    workers, each with ``cpus_per_worker`` CPUs (also its decoder threads; default 1) and ``gpus_per_worker`` GPUs
    (default 0), on the cluster at ``address`` (see ray_engine.RaySettings). Everything is checked before the
    experiment's lock is taken, so a refused run leaves nothing behind; ``warn`` gets the data folder's and the
    decoder's warnings. ``views`` extra views of each image from the catalogue ``view_kind`` (see
    :mod:`kaggle_kit.views`), cached beside the others; cv trains on and averages over all of them. ``pool``:
    how each layer's feature map becomes features (:data:`kaggle_kit.backbones.POOLS`; not 'avg': the set's name
    ends in ``.<pool>``).
    """
    from kaggle_kit.backbones import LAST, check_pool, get_backbone, resolve_weights
    from kaggle_kit.data import discover_remembered

    if tta not in TTA_MODES:
        raise KitError(f"--tta {tta!r} is not one of: {', '.join(TTA_MODES)}", code=2)
    view_list = view_names(views, view_kind)
    check_pool(pool)
    if engine not in ENGINES:
        raise KitError(f"--engine {engine!r} is not one of: {', '.join(ENGINES)}", code=2)
    ray = None
    if engine == "ray":
        from kaggle_kit.ray_engine import RaySettings

        ray = RaySettings(address=address, workers=workers, cpus_per_worker=cpus_per_worker or 1.0,
                          gpus_per_worker=gpus_per_worker or 0.0)
        workers = None  # decoder threads: cpus_per_worker on each worker
    elif address is not None or cpus_per_worker is not None or gpus_per_worker is not None:
        raise KitError("--address, --cpus-per-worker and --gpus-per-worker apply to --engine ray only", code=2)
    spec = get_backbone(backbone)
    wanted = list(dict.fromkeys(None if n == LAST else n for n in layers or [LAST]))  # 'last' -> None
    if name and len(wanted) > 1:
        raise KitError(f"--name names one feature set but {len(wanted)} layers were asked for; drop --name", code=2)
    metric = experiment_metric(exp_dir, metric)
    dataset = discover_remembered(experiment_data(
        exp_dir, data=data, positive=positive, layout=layout, labels=None if labels is None else str(labels),
        id_col=id_col, target_col=target_col))
    size = image_size or spec.input_size
    choice = resolve_weights(spec, weights, image_size=size)
    jobs = [(features_dir(exp_dir, check_name("feature set", name) if name else default_feature_set_name(
                spec.name, input_size=spec.input_size, image_size=size, layer=layer, pool=pool)),
             FeatureSettings(backbone=spec, weights=choice, image_size=size, tta=tta, batch_size=batch_size,
                             workers=workers, shard_size=shard_size, decoder=decoder, ray=ray, layer=layer,
                             views=view_list, pool=pool))
            for layer in wanted]
    with experiment_lock(exp_dir, command=f"features --backbone {backbone}"):
        # Warnings only once the lock is held: a run refused as busy says so in one line.
        for w in dataset.warnings:
            warn(f"warning: {w}")
        if choice.kind == "none":
            warn("WARNING: --weights none: random weights, these features are NOT pretrained and will score poorly "
                 "(use them for plumbing tests only)")
        remember_data(exp_dir, dataset, metric=metric)
        return extract_feature_sets(dataset, jobs, force=force, warn=warn, progress=progress)


def run_features(exp_dir: Path, **settings) -> FeatureResult:
    """:func:`run_feature_sets` of the backbone's default features alone (same keywords, without ``layers``)."""
    return run_feature_sets(exp_dir, **settings)[0]
