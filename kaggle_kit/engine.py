"""How feature extraction computes its shards, whatever the engine: the shards left to do, the one loop that
decodes images and runs the model batch by batch, and the local engine (one model in this process).

``features.extract_features`` lists the unfinished shards (:func:`pending_shards`), hands them to an engine,
then assembles the arrays and writes the manifest. Engines (``features.ENGINES``): ``local``
(:func:`run_local`) and ``ray`` (kaggle_kit/ray_engine.py, whose workers run :func:`predict_batches` too). Both
write the shards through :func:`kaggle_kit.store.save_shard`, so a feature set does not depend on the engine
that made it (same key, same files), and a run of one engine resumes from or reuses the shards of the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from kaggle_kit.artifacts import KitError
from kaggle_kit.store import ClusterRun, save_shard, shard_is_complete, shard_path

if TYPE_CHECKING:
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
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Decode ``paths`` with ``decoder`` and yield ``(feats, ok, flip)`` per batch, in order: float32 (n, width),
    bool (n,), and with flip TTA float32 (n, width) else None. Every engine computes features through this loop.

    ``predict`` maps uint8 (batch_size, s, s, 3) to float (batch_size, width); the last batch is padded to
    ``batch_size`` (so a compiled function never retraces) and the padding rows dropped.
    """
    from kaggle_kit.decoders import iter_batches

    def padded(batch: np.ndarray) -> np.ndarray:
        if len(batch) == batch_size:
            return batch
        pad = np.zeros((batch_size - len(batch), *batch.shape[1:]), dtype=batch.dtype)
        return np.concatenate([batch, pad])

    for batch, ok in iter_batches(paths, decoder=decoder, size=image_size, batch_size=batch_size, workers=workers):
        n = len(batch)
        feats = np.asarray(predict(padded(batch)), dtype=np.float32)[:n]
        flip = None
        if tta == "flip":
            flip = np.asarray(predict(padded(np.ascontiguousarray(batch[:, :, ::-1]))), dtype=np.float32)[:n]
        if feats.shape != (n, width):
            raise KitError(f"the model returned features of shape {feats.shape[1:]}, expected ({width},)")
        yield feats, ok, flip


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
    on_images: Callable[[int], None] = lambda n: None,
) -> int:
    """Compute the shards listed in ``todo`` (see :func:`pending_shards`); return how many images were decoded.

    Batches run across shard boundaries (see :func:`predict_batches` for ``predict``).
    """
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
        save_shard(shard_path(partial, split, index), arrays)
        unit, filled = unit + 1, 0
        for v in buffers.values():
            v.clear()

    for feats, ok, flip in predict_batches(predict, flat, width=width, image_size=image_size,
                                           batch_size=batch_size, tta=tta, workers=workers, decoder=decoder):
        n = len(feats)
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


@dataclass(frozen=True)
class EngineRun:
    """What an engine reports: images computed, extraction seconds (steady state: after the model is built and
    compiled), the one-time build and warm-up seconds, the Keras that ran, and the Ray engine's figures.

    ``build_seconds`` .. ``keras_version`` are None when the engine built no model (a resumed Ray run with
    every shard already finished starts no worker); ``cluster`` is None except for Ray runs with workers."""

    engine: str
    images: int
    seconds: float
    build_seconds: float | None = None
    warmup_seconds: float | None = None
    keras_backend: str | None = None
    keras_version: str | None = None
    cluster: ClusterRun | None = None


def run_local(settings: FeatureSettings, paths: dict[str, list[Path]], partial: Path, todo: list[Shard], *,
              on_images: Callable[[int], None] = lambda n: None) -> EngineRun:
    """The local engine: one model in this process, decoding with ``settings.decoder``."""
    from kaggle_kit.backbones import build_extractor
    from kaggle_kit.keras_loader import load_keras

    t_build = time.perf_counter()
    model = build_extractor(settings.backbone, image_size=settings.image_size, weights=settings.weights)
    build_seconds = time.perf_counter() - t_build
    # subtle: compile on a blank batch before the clock starts; images/s is then the steady-state rate, and the
    # one-time compile (seconds on a GPU under JAX) is reported on its own as warmup_seconds.
    t_warm = time.perf_counter()
    model.predict_on_batch(np.zeros((settings.batch_size, settings.image_size, settings.image_size, 3), np.uint8))
    warmup_seconds = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    n_new = run_extraction(model.predict_on_batch, paths, partial, todo, width=settings.backbone.width,
                           image_size=settings.image_size, batch_size=settings.batch_size, tta=settings.tta,
                           workers=settings.workers, decoder=settings.decoder, on_images=on_images)
    seconds = time.perf_counter() - t0
    keras = load_keras()
    return EngineRun(engine="local", images=n_new, seconds=seconds, build_seconds=round(build_seconds, 2),
                     warmup_seconds=round(warmup_seconds, 2), keras_backend=keras.backend.backend(),
                     keras_version=keras.__version__)
