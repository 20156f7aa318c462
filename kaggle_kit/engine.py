"""How feature extraction computes its shards, whatever the engine: the shards left to do, the one loop that
decodes images and runs the model batch by batch, and the local engine (one model in this process).

``features.extract_feature_sets`` lists the unfinished shards (:func:`pending_shards`), hands them to an engine,
then assembles the arrays and writes the manifests. An engine computes one or several layers' features in one
pass (:func:`build_predictor`: one model with one output per layer, ``None`` standing for the default
features); a shard holds them side by side, with the width of each (see :func:`kaggle_kit.store.save_shard`).
Engines (``features.ENGINES``): ``local`` (:func:`run_local`) and ``ray`` (kaggle_kit/ray_engine.py, whose
workers run :func:`build_predictor` and :func:`predict_batches` too). Both
write the shards through :func:`kaggle_kit.store.save_shard`, so a feature set does not depend on the engine
that made it (same key, same files), and a run of one engine resumes from or reuses the shards of the other.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from kaggle_kit.artifacts import KitError
from kaggle_kit.store import DEFAULT_POOL, ClusterRun, save_shard, shard_is_complete, shard_key, shard_path

if TYPE_CHECKING:
    from kaggle_kit.backbones import Backbone, WeightsChoice
    from kaggle_kit.features import FeatureSettings

Shard = tuple[str, int, int, int]  # (split, shard index, first row, end row)


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """The (first row, end row) of each shard of a split of ``n`` images."""
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


def pending_shards(paths: dict[str, list[Path]], partial: Path, *, shard_size: int) -> list[Shard]:
    """The (split, shard index, first row, end row) of every shard not yet finished, in extraction order."""
    return [
        (split, index, a, b)
        for split, split_paths in paths.items()
        for index, (a, b) in enumerate(shard_ranges(len(split_paths), shard_size))
        if not shard_is_complete(shard_path(partial, split, index), b - a)
    ]


@dataclass(frozen=True)
class Predictor:
    """A built, compiled extractor: ``predict`` maps uint8 (batch, s, s, 3) to float32 (batch, sum(widths)), the
    features of each asked-for layer side by side, in order; the one-time build and warm-up seconds; the Keras
    that runs it."""

    predict: Callable[[np.ndarray], np.ndarray]
    widths: tuple[int, ...]
    build_seconds: float
    warmup_seconds: float
    keras_backend: str
    keras_version: str

    @property
    def width(self) -> int:
        return sum(self.widths)


def build_predictor(backbone: Backbone, *, image_size: int, weights: WeightsChoice, batch_size: int,
                    layers: Sequence[str | None] = (None,), pool: str = DEFAULT_POOL) -> Predictor:
    """Build the extractor of ``layers`` (None: the default features; else a layer name, see
    :func:`kaggle_kit.backbones.cut_layers`), each map pooled by ``pool`` (:data:`kaggle_kit.backbones.POOLS`),
    and compile it on a blank batch of ``batch_size``.

    An unknown layer is a one-line :class:`KitError` before anything runs.
    """
    from kaggle_kit.backbones import LAST, build_extractor
    from kaggle_kit.keras_loader import load_keras

    t_build = time.perf_counter()
    if list(layers) == [None] and pool == DEFAULT_POOL:
        model = build_extractor(backbone, image_size=image_size, weights=weights)
        widths: tuple[int, ...] = (backbone.width,)
        predict: Callable[[np.ndarray], Any] = model.predict_on_batch
    else:
        model = build_extractor(backbone, image_size=image_size, weights=weights,
                                layers=[LAST if layer is None else layer for layer in layers], pool=pool)
        widths = tuple(int(output.shape[-1]) for output in model.outputs)

        def predict(batch: np.ndarray) -> np.ndarray:
            outputs = model.predict_on_batch(batch)
            # subtle: Keras hands back a one-output model's output bare, not in a list of one
            parts = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            return np.concatenate([np.asarray(out, dtype=np.float32) for out in parts], axis=1)
    build_seconds = time.perf_counter() - t_build
    # subtle: compile on a blank batch before the clock starts; images/s is then the steady-state rate, and the
    # one-time compile (seconds on a GPU under JAX) is reported on its own as warmup_seconds.
    t_warm = time.perf_counter()
    predict(np.zeros((batch_size, image_size, image_size, 3), np.uint8))
    warmup_seconds = time.perf_counter() - t_warm
    keras = load_keras()
    return Predictor(predict=predict, widths=widths, build_seconds=round(build_seconds, 2),
                     warmup_seconds=round(warmup_seconds, 2), keras_backend=keras.backend.backend(),
                     keras_version=keras.__version__)


def predict_batches(
    predict: Callable[[np.ndarray], np.ndarray],
    paths: list[Path] | list[str],
    *,
    width: int,
    image_size: int,
    batch_size: int,
    tta: str,
    workers: int | None,
    decoder: str = "opencv",
    views: Sequence[str] = (),
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Decode ``paths`` with ``decoder`` and yield ``(feats, ok)`` per batch, in order: ``feats`` maps each view's
    shard key (:func:`kaggle_kit.store.shard_key` of :func:`kaggle_kit.views.view_suffixes`: 'feats', 'flip',
    'rot90', 'rot90_flip', ...) to float32 (n, width); ``ok`` bool (n,). Every engine computes features through
    this loop.

    ``predict`` maps uint8 (batch_size, s, s, 3) to float (batch_size, width); the last batch is padded to
    ``batch_size`` (so a compiled function never retraces) and the padding rows dropped. ``views``: the extra
    views (:mod:`kaggle_kit.views`), each made from the decoded batch, each flipped too with flip TTA.
    """
    from kaggle_kit.decoders import iter_batches
    from kaggle_kit.views import apply_view, flipped

    def padded(batch: np.ndarray) -> np.ndarray:
        if len(batch) == batch_size:
            return batch
        pad = np.zeros((batch_size - len(batch), *batch.shape[1:]), dtype=batch.dtype)
        return np.concatenate([batch, pad])

    flip = tta == "flip"
    for batch, ok in iter_batches(paths, decoder=decoder, size=image_size, batch_size=batch_size, workers=workers):
        n = len(batch)
        feats: dict[str, np.ndarray] = {}
        for view in ("", *views):
            images = apply_view(batch, view) if view else batch
            feats[shard_key(view)] = np.asarray(predict(padded(images)), dtype=np.float32)[:n]
            if flip:
                feats[shard_key(f"{view}_flip" if view else "flip")] = np.asarray(
                    predict(padded(flipped(images))), dtype=np.float32)[:n]
        shape = feats["feats"].shape
        if shape != (n, width):
            raise KitError(f"the model returned features of shape {shape[1:]}, expected ({width},)")
        yield feats, ok


def run_extraction(
    predict: Callable[[np.ndarray], np.ndarray],
    paths: dict[str, list[Path]],
    partial: Path,
    todo: list[Shard],
    *,
    width: int,
    image_size: int,
    batch_size: int,
    tta: str,
    workers: int | None,
    decoder: str = "opencv",
    views: Sequence[str] = (),
    widths: Sequence[int] | None = None,
    on_images: Callable[[int], None] = lambda n: None,
) -> int:
    """Compute the shards listed in ``todo`` (see :func:`pending_shards`); return how many images were decoded.

    Batches run across shard boundaries (see :func:`predict_batches` for ``predict`` and ``views``). ``widths``:
    the width of each layer whose features sit side by side in ``predict``'s output (default: one layer,
    ``width``).
    """
    flat = [p for split, _, a, b in todo for p in paths[split][a:b]]
    if not flat:
        return 0
    layer_widths = np.asarray(widths if widths is not None else [width], dtype=np.int64)
    if layer_widths.sum() != width:
        raise ValueError(f"the layers' widths {layer_widths.tolist()} do not add up to {width}")

    buffers: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    unit = 0  # index into todo of the shard being filled
    filled = 0

    def flush():
        nonlocal unit, filled
        split, index, a, b = todo[unit]
        arrays = {key: np.concatenate(parts)[: b - a] for key, parts in buffers.items()}
        save_shard(shard_path(partial, split, index), {**arrays, "widths": layer_widths})
        unit, filled = unit + 1, 0
        buffers.clear()

    for feats, ok in predict_batches(predict, flat, width=width, image_size=image_size, batch_size=batch_size,
                                     tta=tta, workers=workers, decoder=decoder, views=views):
        n = len(ok)
        # A batch may straddle shard boundaries: hand its rows to the shards in order.
        start = 0
        while start < n:
            split, index, a, b = todo[unit]
            take = min(n - start, (b - a) - filled)
            for key, values in (*feats.items(), ("ok", ok)):
                buffers[key].append(values[start:start + take])
            filled += take
            start += take
            if filled == b - a:
                flush()
        on_images(n)
    return len(flat)


@dataclass(frozen=True)
class EngineRun:
    """What an engine reports: images computed, extraction seconds (steady state: after the model is built and
    compiled), the one-time build and warm-up seconds, the Keras that ran, and the Ray engine's figures.

    ``build_seconds`` .. ``keras_version`` are None when the engine built no model (a resumed Ray run with
    every shard already finished starts no worker); ``cluster`` is None except for Ray runs with workers."""

    engine: str
    images: int
    seconds: float
    widths: tuple[int, ...] | None = None  # each layer's width, when a model was built
    build_seconds: float | None = None
    warmup_seconds: float | None = None
    keras_backend: str | None = None
    keras_version: str | None = None
    cluster: ClusterRun | None = None


def run_local(settings: FeatureSettings, paths: dict[str, list[Path]], partial: Path, todo: list[Shard], *,
              layers: Sequence[str | None] = (None,), predictor: Predictor | None = None,
              on_images: Callable[[int], None] = lambda n: None) -> EngineRun:
    """The local engine: one model in this process (``predictor``, else built here for ``layers``: see
    :func:`build_predictor`), decoding with ``settings.decoder``."""
    if predictor is None:
        predictor = build_predictor(settings.backbone, image_size=settings.image_size, weights=settings.weights,
                                    batch_size=settings.batch_size, layers=layers, pool=settings.pool)
    t0 = time.perf_counter()
    n_new = run_extraction(predictor.predict, paths, partial, todo, width=predictor.width, widths=predictor.widths,
                           image_size=settings.image_size, batch_size=settings.batch_size, tta=settings.tta,
                           workers=settings.workers, decoder=settings.decoder, views=settings.views,
                           on_images=on_images)
    seconds = time.perf_counter() - t0
    return EngineRun(engine="local", images=n_new, seconds=seconds, widths=predictor.widths,
                     build_seconds=predictor.build_seconds, warmup_seconds=predictor.warmup_seconds,
                     keras_backend=predictor.keras_backend, keras_version=predictor.keras_version)
