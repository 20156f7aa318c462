"""Extraction benchmarks: the kit end to end, the model alone, and the classic tutorial pipeline.

All three see the same photos, image size, batch size and model, in the same run, so their ratios are
meaningful on a noisy machine. Used by bench/run.py (CPU) and bench/gpu.py (GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def subset_competition(src: Path, dest: Path, *, n_per_class: int, n_test: int) -> Path:
    """Symlink the first photos of a Kaggle-layout competition into ``dest`` (nothing is copied)."""
    (dest / "train").mkdir(parents=True, exist_ok=True)
    (dest / "test").mkdir(exist_ok=True)
    for cls in ("cat", "dog"):
        for i in range(1, n_per_class + 1):
            link = dest / "train" / f"{cls}.{i}.jpg"
            if not link.exists():
                link.symlink_to(src / "train" / f"{cls}.{i}.jpg")
    for i in range(1, n_test + 1):
        link = dest / "test" / f"{i}.jpg"
        if not link.exists():
            link.symlink_to(src / "test" / f"{i}.jpg")
    return dest


def answer_labels(answers: Path, ids) -> np.ndarray:
    """The 0/1 labels of ``ids`` in an answer key CSV (first column the id, second the label), in ``ids``' order.
    For reporting only: the benches read a key once, at the end, and never choose anything with it."""
    import pandas as pd

    key = pd.read_csv(answers)
    truth = key.set_index(key.columns[0])[key.columns[1]]
    return truth.loc[[type(truth.index[0])(i) for i in ids]].to_numpy()


def test_score_text(labels: np.ndarray, probs) -> str:
    """``test 0.12345 (95.00%)``: the log loss and accuracy of ``probs`` against an answer key's ``labels``
    (:func:`answer_labels`), for the benches' once-at-the-end reports."""
    from kaggle_kit.metrics import log_loss  # Kaggle's clipping to [1e-15, 1 - 1e-15]

    p = np.asarray(probs, dtype=np.float64)
    return f"test {log_loss(labels, p):.5f} ({np.mean((p > 0.5) == labels):.2%})"


def run_kit(args: list[str], *, cwd: Path, env: dict | None = None, timeout: float | None = None) -> tuple[str, float]:
    """Run ``kaggle-kit ARGS`` in a fresh process; return (stdout, peak RSS in MiB). Raises on failure."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        full_env = {**os.environ, "KK_RSS_FILE": rss.name, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "rss.py"), *args], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"kaggle-kit {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        peak = float(rss.read().split()[-1])
    return proc.stdout, peak


def features_end_to_end(data: Path, workdir: Path, *, backbone: str, weights: str, size: int, batch: int,
                        exp: str, workers: int | None = None, env: dict | None = None, extra: list[str] = (),
                        timeout: float | None = None, pool: str = "avg") -> dict:
    """``kaggle-kit features [EXTRA]`` in a subprocess: images/s from its manifest (extraction only: after the
    model is built and compiled), peak RSS of the driver, the command's wall time and the engine's own figures.

    ``extra``: more options (e.g. ``--decoder dali``, ``--engine ray``); ``pool``: ``--pool`` (the last layer's
    set, whose figures are read, is named after it)."""
    from dataclasses import asdict

    from kaggle_kit.backbones import get_backbone
    from kaggle_kit.store import default_feature_set_name, experiment_dir, features_dir, load_features

    args = ["features", "--backbone", backbone, "--weights", weights, "--image-size", str(size),
            "--batch-size", str(batch), "--data", str(data), "--exp", exp, "--quiet", "--force"]
    if workers:
        args += ["--workers", str(workers)]
    if pool != "avg":
        args += ["--pool", pool]
    t0 = time.perf_counter()
    _, peak = run_kit([*args, *extra], cwd=workdir, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    spec = get_backbone(backbone)
    name = default_feature_set_name(spec.name, input_size=spec.input_size, image_size=size, pool=pool)
    fs = load_features(features_dir(experiment_dir(exp, root=workdir), name))
    engine = {"engine": fs.engine, "build_seconds": fs.build_seconds, "warmup_seconds": fs.warmup_seconds,
              **(asdict(fs.cluster) if fs.cluster is not None else {})}
    return {"images_per_second": fs.images_per_second, "images": fs.n_train + fs.n_test,
            "seconds": fs.extract_seconds, "peak_rss_mib": peak, "wall_seconds": round(wall, 1),
            "engine": {k: v for k, v in engine.items() if v is not None}}


def decoded_batch(paths: list[Path], size: int, batch: int) -> np.ndarray:
    from kaggle_kit.images import decode_image

    imgs = [decode_image(p, size) for p in paths[:batch]]
    return np.stack([i for i in imgs if i is not None])


def model_only(backbone: str, weights: str, *, images: np.ndarray, n_batches: int) -> dict:
    """The extractor alone on one pre-decoded uint8 batch, called ``n_batches`` times after one warm-up."""
    from kaggle_kit.backbones import build_extractor, get_backbone, resolve_weights

    spec = get_backbone(backbone)
    model = build_extractor(spec, image_size=images.shape[1], weights=resolve_weights(spec, weights))
    np.asarray(model.predict_on_batch(images))  # compile
    t0 = time.perf_counter()
    for _ in range(n_batches):
        np.asarray(model.predict_on_batch(images))
    seconds = time.perf_counter() - t0
    return {"images_per_second": round(n_batches * len(images) / seconds, 2), "images": n_batches * len(images),
            "seconds": round(seconds, 2)}


def classic_pipeline(data: Path, backbone: str, weights: str, *, size: int, batch: int) -> dict:
    """The classic tutorial way: ``image_dataset_from_directory`` over class folders, then ``model.predict``.

    The model is the same backbone with the same preprocessing layer, fed float32 batches as in the tutorials.
    """
    import keras

    from kaggle_kit.backbones import build_base, get_backbone, preprocess_layer, resolve_weights

    spec = get_backbone(backbone)
    with tempfile.TemporaryDirectory() as tmp:
        n = 0
        for cls in ("cat", "dog"):
            (Path(tmp) / cls).mkdir()
            for f in sorted((data / "train").glob(f"{cls}.*.jpg")):
                (Path(tmp) / cls / f.name).symlink_to(f.resolve())
                n += 1
        ds = keras.utils.image_dataset_from_directory(tmp, labels=None, image_size=(size, size),
                                                      batch_size=batch, shuffle=False, verbose=False)
        base = build_base(spec, image_size=size, weights=resolve_weights(spec, weights))
        inputs = keras.Input((size, size, 3))
        model = keras.Model(inputs, base(preprocess_layer(spec.preprocess)(inputs)))
        t0 = time.perf_counter()
        out = model.predict(ds, verbose=0)
        seconds = time.perf_counter() - t0
    assert out.shape[0] == n
    return {"images_per_second": round(n / seconds, 2), "images": n, "seconds": round(seconds, 2)}
