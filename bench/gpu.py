"""GPU extraction benchmark: ``kaggle-kit features`` end to end against the model alone, per backbone and decoder.

Made for one short run on a GPU machine with no network and no TensorFlow (bench/gpu.sh sets it up): Keras on
JAX, random weights (``--weights none``: speed does not depend on them), ``--images`` synthetic photo-sized
JPEGs (500 x 375, like the Redux photos). For each backbone:size of ``--models`` and each decoder that can run
(``opencv``; ``dali`` where NVIDIA DALI imports and sees a GPU), it measures in fresh processes:

- end to end: ``kaggle-kit features`` on all the images; images/s from its manifest (extraction only: the model
  build and the one-time compile are excluded, as in every manifest);
- model only: the same extractor on one pre-decoded uint8 batch from host memory (what ``features`` hands it),
  and, under JAX on a GPU, on the batch already on the device (the compute ceiling);
- decode only: the decoder alone over all the images (no model), and for DALI its pixel difference to OpenCV.

Every measurement runs in its own process, so no two hold the GPU at once. A result is written after each one
(JSON: $OUT/gpu_bench.json when $OUT is set, else experiments/bench/gpu.json); ``--budget-s`` skips what would
not finish in time, and says so. The table printed at the end has end-to-end img/s, model-only img/s and
their ratio. Goals on an H200 (issue 18): Xception end to end >= 2,500 img/s with OpenCV, >= 5,000 with DALI.

    python bench/gpu.py                                               # H200 defaults
    python bench/gpu.py --images 64 --batch 16 --models xception:71   # a CPU smoke run of the same path
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
DEFAULT_MODELS = "xception:299,inception_v3:299,resnet50:224,efficientnet_lite0:320"


# ------------------------------------------------------------------------------------------------ workers
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


def _all_photos(data: Path) -> list[Path]:
    return sorted((data / "train").iterdir()) + sorted((data / "test").iterdir())


def worker_model(args) -> dict:
    """Model only: one extractor, timed on a uint8 batch from the host, then (JAX on a GPU) on the same batch
    already on the device; one untimed call each first (the compile; both share one compiled function)."""
    from extraction import decoded_batch

    from kaggle_kit.backbones import build_extractor, get_backbone, resolve_weights

    batch = decoded_batch(_all_photos(Path(args.data)), args.size, args.batch)
    spec = get_backbone(args.backbone)
    model = build_extractor(spec, image_size=args.size, weights=resolve_weights(spec, "none"))
    inputs = {"host_uint8": batch}
    import keras

    if keras.backend.backend() == "jax":
        import jax

        if jax.devices()[0].platform == "gpu":
            inputs["device_uint8"] = jax.device_put(batch)
    result = {}
    for name, x in inputs.items():
        np.asarray(model.predict_on_batch(x))  # compile (or a cache hit), then steady state
        t0 = time.perf_counter()
        for _ in range(args.batches):
            np.asarray(model.predict_on_batch(x))
        seconds = time.perf_counter() - t0
        result[name] = {"images_per_second": round(args.batches * len(batch) / seconds, 1),
                        "images": args.batches * len(batch), "seconds": round(seconds, 3)}
    return result


def worker_decode(args) -> dict:
    """Decode only: the decoder over every image in batches, no model; DALI's pixels against OpenCV's."""
    from kaggle_kit.decoders import iter_batches
    from kaggle_kit.images import decode_image

    paths = _all_photos(Path(args.data))
    first = None
    for _ in range(2):  # the first pass starts threads / the pipeline and fills the page cache; the second counts
        t0 = time.perf_counter()
        n = 0
        for images, ok in iter_batches(paths, decoder=args.decoder, size=args.size, batch_size=args.batch,
                                       workers=args.workers):
            if hasattr(images, "block_until_ready"):  # DALI -> JAX: the batch as features hands it to the model
                images.block_until_ready()
            n += int(ok.sum())
            if first is None:
                first = np.asarray(images)
        seconds = time.perf_counter() - t0
    result = {"images_per_second": round(n / seconds, 1), "images": n, "seconds": round(seconds, 3)}
    if args.decoder != "opencv":
        ref = np.stack([decode_image(p, args.size) for p in paths[: len(first)]])
        diff = np.abs(first.astype(np.int16) - ref.astype(np.int16))
        result["pixels_vs_opencv"] = {"mean_abs": round(float(diff.mean()), 3),
                                      "p99_abs": float(np.percentile(diff, 99)), "max_abs": int(diff.max()),
                                      "images": len(first)}
    return result


# ------------------------------------------------------------------------------------------- orchestration
def _run_worker(kind: str, out: Path, extra: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--worker-out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(out.read_text())


def _dali_status() -> str | None:
    """None when --decoder dali can run here, else why not (one line)."""
    code = ("from kaggle_kit.artifacts import KitError\nfrom kaggle_kit.decoders import check_decoder\n"
            "try:\n    check_decoder('dali')\nexcept KitError as exc:\n    raise SystemExit(str(exc))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1][:300]


def _environment() -> dict:
    code = ("import json, keras; info = {'keras': keras.__version__, 'backend': keras.backend.backend()}\n"
            "try:\n import jax; info['jax'] = jax.__version__; info['devices'] = [str(d) for d in jax.devices()]\n"
            "except ImportError: info['devices'] = ['(no jax)']\n"
            "print(json.dumps(info))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    env = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]}
    return {**env, "python": platform.python_version(), "cpus": os.cpu_count()}


def _fmt(x) -> str:
    return f"{x:,.1f}" if isinstance(x, (int, float)) else "-"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(result: dict) -> str:
    head = (f"{'backbone':<19}{'px':>4} {'decoder':<7}{'end to end':>11}{'model only':>11}{'ratio':>7}"
            f"{'on device':>11}{'decode only':>12}")
    lines = [head, "-" * len(head)]
    for row in result["rows"]:
        lines.append(f"{row['backbone']:<19}{row['size']:>4} {row['decoder']:<7}{_fmt(row.get('end_to_end')):>11}"
                     f"{_fmt(row.get('model_only')):>11}{_ratio(row.get('ratio')):>7}"
                     f"{_fmt(row.get('model_only_on_device')):>11}{_fmt(row.get('decode_only')):>12}")
    lines.append("img/s; ratio = end to end / model only (uint8 batches from host memory, what features feeds);")
    lines.append("on device = model only with the batch already on the GPU (the compute ceiling).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8192, help="synthetic JPEGs (3/4 train, 1/4 test)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", default=DEFAULT_MODELS, help="backbone:size,... in the order to measure")
    ap.add_argument("--decoders", default="opencv,dali", help="those that cannot run here are skipped, with why")
    ap.add_argument("--model-batches", type=int, default=20, help="timed batches of the model-only runs")
    ap.add_argument("--budget-s", type=float, default=420, help="skip measurements that would end later than this")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--worker", choices=["model", "decode"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--backbone", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batches", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--decoder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        result = (worker_model if args.worker == "model" else worker_decode)(args)
        Path(args.worker_out).write_text(json.dumps(result))
        return

    t_start = time.perf_counter()
    out = Path(os.environ["OUT"]) / "gpu_bench.json" if os.environ.get("OUT") else REPO / "experiments" / "bench" / "gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    models = [(m.split(":")[0], int(m.split(":")[1])) for m in args.models.split(",")]
    result = {"images": args.images, "batch": args.batch, "environment": _environment(), "rows": [], "skipped": []}
    decoders = []
    for d in args.decoders.split(","):
        why = _dali_status() if d == "dali" else None
        if why is None:
            decoders.append(d)
        else:
            result["skipped"].append(f"decoder {d}: {why}")
    costs: dict[str, float] = {}  # the longest of each kind so far: what the next one is expected to take

    def save():
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        out.write_text(json.dumps(result, indent=2) + "\n")

    def measure(kind: str, what: str, fn):
        expected = costs.get(kind, 0.0)
        left = args.budget_s - (time.perf_counter() - t_start)
        if expected > left:
            result["skipped"].append(f"{what}: about {expected:.0f} s, {left:.0f} s of the budget left")
            print(f"  skipped {what} (budget)", flush=True)
            return None
        t0 = time.perf_counter()
        try:
            value = fn(max(30.0, left))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result["skipped"].append(f"{what}: failed: {' '.join(str(exc).split())[-600:]}")
            print(f"  FAILED {what}: {str(exc)[-600:]}", flush=True)
            value = None
        costs[kind] = max(costs.get(kind, 0.0), time.perf_counter() - t0)
        print(f"  {what}: {time.perf_counter() - t0:.1f} s", flush=True)
        return value

    print(f"environment: {json.dumps(result['environment'])}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data, work = Path(tmp) / "data", Path(tmp) / "work"
        work.mkdir()
        t0 = time.perf_counter()
        make_photos(data, n=args.images, workers=args.workers)
        print(f"made {args.images} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
        from extraction import features_end_to_end

        decode_done: dict[tuple[str, int], float | None] = {}
        for backbone, size in models:
            model = None
            for decoder in decoders:
                row = {"backbone": backbone, "size": size, "decoder": decoder}
                result["rows"].append(row)
                name = f"{backbone} {size}px {decoder}"

                def e2e(timeout, decoder=decoder, backbone=backbone, size=size):
                    return features_end_to_end(data, work, backbone=backbone, weights="none", size=size,
                                               batch=args.batch, exp=f"gpu-{decoder}", workers=args.workers,
                                               extra=["--decoder", decoder], timeout=timeout)

                got = measure("e2e", f"end to end {name}", e2e)
                if got:
                    row["end_to_end"] = got["images_per_second"]
                    row["peak_rss_mib"] = round(got["peak_rss_mib"])
                save()
                if model is None:
                    model = measure("model", f"model only {backbone} {size}px", lambda timeout: _run_worker(
                        "model", work / "model.json", ["--data", str(data), "--backbone", backbone, "--size",
                                                       str(size), "--batch", str(args.batch), "--batches",
                                                       str(args.model_batches)], timeout)) or {}
                if model.get("host_uint8"):
                    row["model_only"] = model["host_uint8"]["images_per_second"]
                    if row.get("end_to_end"):
                        row["ratio"] = round(row["end_to_end"] / row["model_only"], 3)
                if model.get("device_uint8"):
                    row["model_only_on_device"] = model["device_uint8"]["images_per_second"]
                if (decoder, size) not in decode_done:
                    got = measure("decode", f"decode only {decoder} {size}px", lambda timeout: _run_worker(
                        "decode", work / "decode.json", ["--data", str(data), "--decoder", decoder, "--size",
                                                         str(size), "--batch", str(args.batch),
                                                         "--workers", str(args.workers)], timeout))
                    decode_done[(decoder, size)] = got
                got = decode_done[(decoder, size)]
                if got:
                    row["decode_only"] = got["images_per_second"]
                    if "pixels_vs_opencv" in got:
                        row["pixels_vs_opencv"] = got["pixels_vs_opencv"]
                save()
    save()
    print()
    print(table(result))
    for line in result["skipped"]:
        print(f"skipped: {line}")
    print(out)


if __name__ == "__main__":
    main()
