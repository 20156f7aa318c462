"""GPU extraction benchmark: ``kaggle-kit features`` end to end against the model alone, same batches.

Runs where TensorFlow may be missing: Keras on JAX (``KERAS_BACKEND=jax``, set by bench/gpu.sh). Makes
``--images`` synthetic photo-sized JPEGs (500 x 375, like the Redux photos) so no data set is needed,
extracts features with random weights, and prints one table; JSON goes to $OUT/gpu_bench.json when $OUT is
set (the device tool's output folder), else experiments/bench/gpu.json.

    python bench/gpu.py --images 4096 --size 299 --batch 256          # the H200 goal: >= 2,500 img/s e2e
    python bench/gpu.py --images 64 --size 71 --batch 16              # a CPU smoke run of the same path
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extraction import decoded_batch, features_end_to_end, model_only  # noqa: E402


def make_photos(dest: Path, *, n: int, workers: int, seed: int = 0) -> None:
    """Kaggle-layout competition of ``n`` JPEGs (3/4 train, 1/4 test), 500 x 375, textured like photos."""
    import cv2

    (dest / "train").mkdir(parents=True)
    (dest / "test").mkdir()
    n_train = n * 3 // 4
    names = [f"train/{'cat' if i % 2 else 'dog'}.{i // 2 + 1}.jpg" for i in range(n_train)]
    names += [f"test/{i + 1}.jpg" for i in range(n - n_train)]

    def one(k: int) -> None:
        rng = np.random.default_rng(seed + k)
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        img = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, rng.integers(0, 24, img.shape, dtype=np.uint8))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (dest / names[k]).write_bytes(buf.tobytes())

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--backbone", default="xception")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()

    import keras

    with tempfile.TemporaryDirectory() as tmp:
        data, work = Path(tmp) / "data", Path(tmp) / "work"
        work.mkdir()
        make_photos(data, n=args.images, workers=args.workers)
        e2e = features_end_to_end(data, work, backbone=args.backbone, weights="none", size=args.size,
                                  batch=args.batch, exp="gpu", workers=args.workers)
        batch = decoded_batch(sorted((data / "train").iterdir()), args.size, args.batch)
        alone = model_only(args.backbone, "none", images=batch, n_batches=max(2, args.images // args.batch))
    result = {
        "backend": keras.backend.backend(),
        "devices": [str(d) for d in _devices()],
        "backbone": args.backbone, "size": args.size, "batch": args.batch, "images": args.images,
        "end_to_end": e2e, "model_only": alone,
        "ratio_end_to_end_over_model_only": round(e2e["images_per_second"] / alone["images_per_second"], 3),
    }
    print(f"{args.backbone} {args.size}px batch {args.batch} on {result['backend']} {result['devices']}")
    print(f"  end to end (kaggle-kit features): {e2e['images_per_second']:>9.1f} img/s "
          f"({e2e['images']} images, peak RSS {e2e['peak_rss_mib']:.0f} MiB)")
    print(f"  model only (pre-decoded uint8):   {alone['images_per_second']:>9.1f} img/s")
    print(f"  ratio end to end / model only:    {result['ratio_end_to_end_over_model_only']:>9.3f}")
    out = Path(os.environ["OUT"]) / "gpu_bench.json" if os.environ.get("OUT") else \
        Path(__file__).resolve().parents[1] / "experiments" / "bench" / "gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(out)


def _devices() -> list:
    try:
        import jax

        return jax.devices()
    except ImportError:
        return ["(jax not installed: TensorFlow/CPU)"]


if __name__ == "__main__":
    main()
