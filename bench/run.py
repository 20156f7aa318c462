"""`make bench`: speed and quality side by side, on this machine. Prints a table, writes
experiments/bench/results.json. Every speed figure has a ratio beside it measured in the same run.

Sections:
1. extraction: `kaggle-kit features` end to end vs the model alone on pre-decoded batches vs the classic
   tutorial pipeline (image_dataset_from_directory + model.predict), same photos, size, batch and model;
2. memory: peak RSS of extraction at two data sizes (it must not grow with the number of images);
3. later stages at Kaggle size: cv (logreg heads of three 2,048-wide backbones + concat), blend, submit on
   synthetic features for 25,000 train / 12,500 test rows, through the real CLI, with their peak RSS; then the
   kit's logreg head beside scikit-learn's LogisticRegressionCV (same folds, inner folds and C grid,
   n_jobs=2) on one of the feature sets, cut to SKLEARN_ROWS random training rows (scikit-learn at full size
   took 605 s where the kit took 53 s: longer than the rest of the bench);
4. quality on the real mini competition: the kit's default pipeline vs the classic recipe, same features,
   scored against the answer key; quality_options: the default pipeline's features with and without
   ``cv --pseudo`` and ``features --views`` on both dev sets (dogs-vs-cats-mini: crops, malaria-mini: quarter
   turns), blend OOF beside test log loss, extraction img/s and cv seconds;
5. ray: `features --engine ray` with 1 and 2 workers on this machine against the local engine, same photos,
   back to back: the engine's overhead, and per-shard times from which to extrapolate to N GPU workers;
6. new_feature_sets: `features` end to end for efficientnet_lite1 (384 px) and efficientnet_lite2 (320 px) at
   their default sizes, and one multi-layer pass (lite0 320 px, --layer block5 block6 last: one decode, one
   forward pass, three feature sets) beside the single-set lite0 320 px run, same 256 mini photos, batch 32; then
   the recipe's SqueezeNet 128 px pass (fire5_concat, fire6_concat, last) with --pool avg and --pool avgmax.

    .venv/bin/python bench/run.py [--quick] [--only quality ...]   (one section: results-<section>.json)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cv import compare_with_sklearn, print_comparison  # noqa: E402
from extraction import (  # noqa: E402
    REPO,
    answer_labels,
    classic_pipeline,
    decoded_batch,
    features_end_to_end,
    model_only,
    run_kit,
    subset_competition,
)

SHARED = REPO.parent / "shared"
MINI = SHARED / "data" / "dogs-vs-cats-mini"
SQUEEZENET_H5 = SHARED / "weights" / "squeezenet_v1.1" / "squeezenet_v1.1_imagenet_notop.h5"
OUT = REPO / "experiments" / "bench"
# Training rows of the kit vs scikit-learn comparison (Kaggle size is 25,000): about 2 minutes for scikit-learn.
SKLEARN_ROWS = 10_000


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ 1. extraction
def bench_extraction(work: Path, *, quick: bool) -> list[dict]:
    rows = []
    cases = [
        # backbone, weights, size, photos per class, test photos, model-only batches
        ("squeezenet", str(SQUEEZENET_H5), 227, 800 if not quick else 100, 400 if not quick else 50, 8),
        ("resnet50", "none", 224, 96 if not quick else 16, 64 if not quick else 16, 3),
    ]
    for backbone, weights, size, per_class, n_test, n_batches in cases:
        data = subset_competition(MINI, work / f"data-{backbone}", n_per_class=per_class, n_test=n_test)
        log(f"{backbone}: end to end on {2 * per_class + n_test} photos")
        e2e = features_end_to_end(data, work, backbone=backbone, weights=weights, size=size, batch=32,
                                  exp=f"x-{backbone}")
        log(f"{backbone}: model only")
        alone = model_only(backbone, weights, images=decoded_batch(sorted((data / "train").iterdir()), size, 32),
                           n_batches=n_batches)
        log(f"{backbone}: classic pipeline")
        classic = classic_pipeline(data, backbone, weights, size=size, batch=32)
        rows.append({
            "backbone": backbone, "size": size, "batch": 32, "weights": "imagenet" if weights != "none" else "none",
            "end_to_end": e2e, "model_only": alone, "classic": classic,
            "e2e_over_model_only": round(e2e["images_per_second"] / alone["images_per_second"], 3),
            "e2e_over_classic": round(e2e["images_per_second"] / classic["images_per_second"], 3),
        })
    return rows


# --------------------------------------------------------------------------------------------- 2. memory
def bench_extraction_memory(work: Path, *, quick: bool) -> dict:
    small, large = (50, 200) if quick else (100, 800)
    peaks = {}
    for per_class in (small, large):
        data = subset_competition(MINI, work / f"mem-{per_class}", n_per_class=per_class, n_test=per_class // 2)
        r = features_end_to_end(data, work, backbone="squeezenet", weights=str(SQUEEZENET_H5), size=227, batch=32,
                                exp=f"mem-{per_class}")
        peaks[r["images"]] = r["peak_rss_mib"]
    (n1, p1), (n2, p2) = sorted(peaks.items())
    return {"images": [n1, n2], "peak_rss_mib": [p1, p2], "growth_ratio": round(p2 / p1, 3)}


# --------------------------------------------------------------------------------- 3. Kaggle-size stages
def make_synthetic_experiment(work: Path, *, n_train: int, n_test: int, widths: tuple[int, ...],
                              seed: int = 0) -> Path:
    """A competition folder of empty-named image files plus feature sets with real manifests.

    The images are never decoded (features are given), so they are tiny placeholder files; the feature sets
    carry signal in a low-rank subspace plus noise, different per backbone, so heads and blends have work.
    """
    from kaggle_kit.data import discover
    from kaggle_kit.features import write_feature_set
    from kaggle_kit.store import experiment_dir, features_dir, save_experiment

    data = work / "kaggle-size-data"
    (data / "train").mkdir(parents=True)
    (data / "test").mkdir()
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_train)
    counters = {"cat": 0, "dog": 0}
    for label in y:
        cls = "dog" if label else "cat"
        counters[cls] += 1
        (data / "train" / f"{cls}.{counters[cls]}.jpg").touch()
    for i in range(1, n_test + 1):
        (data / "test" / f"{i}.jpg").touch()
    dataset = discover(data)
    exp_dir = experiment_dir("kaggle-size", root=work)
    save_experiment(exp_dir, data_dir=dataset.root, positive="dog")
    y_all = np.concatenate([dataset.y, rng.integers(0, 2, n_test)]).astype(np.float32)
    for b, width in enumerate(widths):
        rank = 32
        basis = rng.standard_normal((rank, width)).astype(np.float32)
        direction = rng.standard_normal(width).astype(np.float32)
        direction /= np.linalg.norm(direction)
        z = rng.standard_normal((len(y_all), rank)).astype(np.float32)
        X = z @ basis + rng.standard_normal((len(y_all), width)).astype(np.float32)
        X += np.outer(y_all - 0.5, direction * (4.0 + b)).astype(np.float32)
        write_feature_set(features_dir(exp_dir, f"synthetic{b}"), dataset,
                          {"train": X[:n_train], "test": X[n_train:]}, backbone=f"synthetic{b}",
                          note="bench/run.py synthetic features")
    return exp_dir


def bench_later_stages(work: Path, *, quick: bool) -> dict:
    n_train, n_test = (5000, 2500) if quick else (25_000, 12_500)
    log(f"synthetic experiment: {n_train} train / {n_test} test rows, 3 x 2048 features")
    exp_dir = make_synthetic_experiment(work, n_train=n_train, n_test=n_test, widths=(2048, 2048, 2048))
    exp = exp_dir.name
    out = {"n_train": n_train, "n_test": n_test, "widths": [2048, 2048, 2048]}
    steps = [
        ("cv", ["cv", "--exp", exp, "--folds", "5", "--head", "logreg", "--head", "concat", "--quiet"]),
        ("blend", ["blend", "--exp", exp]),
        ("submit", ["submit", "--exp", exp, "--name", f"bench-{int(time.time())}.csv"]),
    ]
    for step, args in steps:
        log(f"kaggle-size {step}")
        t0 = time.perf_counter()
        stdout, peak = run_kit(args, cwd=work)
        out[step] = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(peak, 1)}
        if step == "cv":
            out[step]["table"] = stdout.strip().splitlines()[-6:]
    submission = Path(stdout.strip().splitlines()[-1])
    (work / submission).unlink(missing_ok=True)  # the bench's own CSV: not a user submission
    out["sklearn_comparison"] = sklearn_comparison(exp_dir, rows=2000 if quick else SKLEARN_ROWS)
    return out


def sklearn_comparison(exp_dir: Path, *, rows: int) -> dict:
    """The kit's logreg head vs scikit-learn's LogisticRegressionCV on the experiment's first feature set and
    its fold plan, both cut to ``rows`` training rows drawn at random (seeded; each keeps its fold)."""
    from kaggle_kit.store import features_dir, load_features, load_plan

    fs = load_features(features_dir(exp_dir, "synthetic0"))
    plan = load_plan(exp_dir)
    # subtle: the rows are in file-name order (every cat before every dog), so take a random subset, not a head
    keep = np.sort(np.random.default_rng(0).choice(len(fs.y), min(rows, len(fs.y)), replace=False))
    log(f"kaggle-size: kit logreg vs scikit-learn LogisticRegressionCV, synthetic0, {len(keep)} training rows")
    return compare_with_sklearn(np.asarray(fs.arrays["train"][keep]), fs.y[keep], plan.plan[:, keep],
                                np.asarray(fs.arrays["test"]), seed=plan.seed)


# -------------------------------------------------------------------------------------------- 4. quality
def bench_quality(work: Path, *, quick: bool) -> dict:
    """The kit's default pipeline vs the classic recipe, on the same features of the mini competition."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from kaggle_kit.store import experiment_dir, features_dir, load_features

    exp = "mini-quality"
    data = MINI if not quick else subset_competition(MINI, work / "mini-quick", n_per_class=150, n_test=100)
    for backbone, weights in (("squeezenet", str(SQUEEZENET_H5)), ("efficientnet_lite0", "imagenet")):
        log(f"quality: features {backbone} (flip TTA)")
        run_kit(["features", "--backbone", backbone, "--weights", weights, "--tta", "flip", "--data", str(data),
                 "--exp", exp, "--quiet"], cwd=work)
    log("quality: cv, blend, submit")
    run_kit(["cv", "--exp", exp, "--folds", "5", "--quiet"], cwd=work)
    blend_out, _ = run_kit(["blend", "--exp", exp], cwd=work)
    submit_out, _ = run_kit(["submit", "--exp", exp, "--name", f"bench-quality-{int(time.time())}.csv"], cwd=work)
    csv = work / submit_out.strip().splitlines()[-1]
    answers = pd.read_csv(MINI / "test_labels.csv").set_index("id")["label"]
    sub = pd.read_csv(csv)
    kit_loss = log_loss(answers.loc[sub["id"]].to_numpy(), sub["label"].to_numpy(), labels=[0, 1])
    csv.unlink()

    classic = {}
    exp_dir = experiment_dir(exp, root=work)
    for name in ("squeezenet", "efficientnet_lite0"):
        fs = load_features(features_dir(exp_dir, name))
        model = LogisticRegression(max_iter=2000).fit(fs.arrays["train"], fs.y)
        p = np.clip(model.predict_proba(fs.arrays["test"])[:, 1], 0.005, 0.995)
        truth = answers.loc[[int(i) for i in fs.test_ids]].to_numpy()
        classic[name] = round(float(log_loss(truth, p, labels=[0, 1])), 5)
    return {"kit_submission_logloss": round(float(kit_loss), 5), "classic_recipe_logloss": classic,
            "ladder": [line.strip() for line in blend_out.splitlines() if line.startswith("  ")]}


# ------------------------------------------------------------------------- 4b. quality of cv --pseudo and --views
MALARIA = SHARED / "data" / "malaria-mini"
# The views each dev set gets (chosen out of fold: bench/views_defaults.py; README "Augmented views").
QUALITY_VIEWS = {"dogs-vs-cats-mini": ["--views", "{dogs_views}", "--view-kind", "crops"],
                 "malaria-mini": ["--views", "3", "--view-kind", "rotations"]}


def subset_folders(src: Path, dest: Path, *, n_per_class: int, n_test: int) -> Path:
    """Symlink the first images of each class folder and the first test images of a folder-layout competition."""
    for folder in sorted(p for p in (src / "train").iterdir() if p.is_dir()):
        (dest / "train" / folder.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(folder.iterdir())[:n_per_class]:
            (dest / "train" / folder.name / f.name).symlink_to(f)
    (dest / "test").mkdir(parents=True, exist_ok=True)
    for f in sorted((src / "test").iterdir())[:n_test]:
        (dest / "test" / f.name).symlink_to(f)
    return dest


def _pipeline_row(work: Path, exp: str, answers: Path, *, cv_extra: list[str]) -> dict:
    """cv (with ``cv_extra``), blend and submit on the experiment's features: the blend's OOF score, the test
    log loss of the submission against the answer key (reporting only), and the cv seconds."""
    import pandas as pd

    from kaggle_kit.metrics import log_loss
    from kaggle_kit.store import experiment_dir, load_blend

    t0 = time.perf_counter()
    run_kit(["cv", "--exp", exp, "--folds", "5", "--quiet", *cv_extra], cwd=work)
    cv_seconds = time.perf_counter() - t0
    run_kit(["blend", "--exp", exp], cwd=work)
    out, _ = run_kit(["submit", "--exp", exp, "--name", f"{exp}-{int(time.time())}.csv"], cwd=work)
    csv = work / out.strip().splitlines()[-1]
    sub = pd.read_csv(csv)
    t = answer_labels(answers, sub.iloc[:, 0])
    p = sub.iloc[:, 1].to_numpy()
    csv.unlink()
    blend = load_blend(experiment_dir(exp, root=work))
    return {"blend_oof_logloss": round(float(blend.ladder[-1].score), 5), "blend_models": list(blend.weights),
            "test_logloss": round(float(log_loss(t, p)), 5), "test_accuracy": round(float(np.mean((p > 0.5) == t)), 4),
            "cv_seconds": round(cv_seconds, 1)}


def bench_quality_options(work: Path, *, quick: bool, dogs_views: int = 1) -> dict:
    """cv --pseudo and features --views on both dev sets: the default pipeline's features (Lite0 320 px, flip,
    logreg + mlp heads, blend) with and without each option, through the CLI; OOF decides, the answer keys only
    report. Extraction img/s is per image (all of its views)."""
    from kaggle_kit.store import experiment_dir, features_dir, load_features

    rows = []
    for data, positive in ((MINI, "dog"), (MALARIA, "Parasitized")):
        name = data.name
        src = data
        if quick:
            src = (subset_competition(MINI, work / "q-dogs", n_per_class=60, n_test=40) if data == MINI else
                   subset_folders(MALARIA, work / "q-malaria", n_per_class=60, n_test=40))
        views = [v.format(dogs_views=dogs_views) for v in QUALITY_VIEWS[name]]
        for label, extra in (("flip", []), (" ".join(views), views)):
            exp = f"q-{name}-{'views' if extra else 'flip'}"
            log(f"quality options: {name} features lite0 --tta flip {' '.join(extra)}")
            run_kit(["features", "--data", str(src), "--positive", positive, "--exp", exp, "-b", "efficientnet_lite0",
                     "--tta", "flip", *extra, "--quiet"], cwd=work)
            fs = load_features(features_dir(experiment_dir(exp, root=work), "efficientnet_lite0"))
            for pseudo in (False, True):
                log(f"quality options: {name} {label}{' + pseudo' if pseudo else ''}: cv, blend, submit")
                row = _pipeline_row(work, exp, data / "test_labels.csv", cv_extra=["--pseudo"] if pseudo else [])
                rows.append({"data": name, "views": label, "pseudo": pseudo,
                             "extract_img_per_s": fs.images_per_second, "n_views": len(fs.view_suffixes), **row})
    return {"rows": rows}


# ------------------------------------------------------------------------------------------ 5. Ray engine
def bench_ray(work: Path, *, quick: bool) -> dict:
    """The Ray engine's overhead: the same photos, settings and shards through the local engine, then through
    ``--engine ray`` with 1 worker (all CPUs) and 2 workers (half each), back to back, Ray started on this machine
    for each run. img/s is the steady state for all three (after the models are built and compiled); the
    one-time costs (Ray and its workers starting) are reported on their own, with each command's wall time."""
    import statistics

    per_class, n_test, shard = (800, 400, 256) if not quick else (100, 50, 64)
    data = subset_competition(MINI, work / "data-ray", n_per_class=per_class, n_test=n_test)
    cpus = os.cpu_count() or 1
    common = dict(backbone="squeezenet", weights=str(SQUEEZENET_H5), size=227, batch=32,
                  env={"RAY_USAGE_STATS_ENABLED": "0"})
    cases = {
        "local": (),
        "ray_1_worker": ("--engine", "ray", "--workers", "1", "--cpus-per-worker", str(cpus)),
        "ray_2_workers": ("--engine", "ray", "--workers", "2", "--cpus-per-worker", f"{cpus / 2:g}"),
    }
    out = {"images": 2 * per_class + n_test, "shard_size": shard, "backbone": "squeezenet 227 px, batch 32",
           "cpus": cpus, "load_before": [round(x, 2) for x in os.getloadavg()]}
    for case, extra in cases.items():
        log(f"ray section: {case} on {out['images']} photos")
        r = features_end_to_end(data, work, exp=f"ray-{case}", extra=("--shard-size", str(shard), *extra), **common)
        shards = r["engine"].pop("shard_seconds", None)
        if shards:
            r["engine"]["shard_seconds_median"] = round(statistics.median(shards), 3)
            r["engine"]["shard_seconds_range"] = [min(shards), max(shards)]
            r["engine"]["worker_images_per_second"] = round(shard / statistics.median(shards), 1)
        out[case] = r
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    local = out["local"]["images_per_second"]
    for case in ("ray_1_worker", "ray_2_workers"):
        out[case]["over_local"] = round(out[case]["images_per_second"] / local, 3)
    return out


# ------------------------------------------------------------------------------------- 6. new feature sets
MULTI_LAYERS = ("block5", "block6", "last")
SQUEEZENET_LAYERS = ("fire5_concat", "fire6_concat", "last")  # the recipe's 128 px cuts, and the last layer


def bench_new_feature_sets(work: Path, *, quick: bool) -> list[dict]:
    """End-to-end img/s of the Lite1/Lite2 feature sets, of one multi-layer pass, and of the recipe's SqueezeNet
    pass with mean and with mean-and-max pooling (--pool avgmax), all on the same photos."""
    from kaggle_kit.backbones import get_backbone
    from kaggle_kit.store import default_feature_set_name, experiment_dir, features_dir, load_features

    per_class, n_test = (16, 32) if quick else (96, 64)  # 256 photos, or 64 with --quick
    data = subset_competition(MINI, work / "data-new-sets", n_per_class=per_class, n_test=n_test)
    cases = [  # label, backbone, size, layers, pool
        ("lite0 single set", "efficientnet_lite0", 320, None, "avg"),
        ("lite0 3 layers, one pass", "efficientnet_lite0", 320, MULTI_LAYERS, "avg"),
        ("lite1", "efficientnet_lite1", get_backbone("efficientnet_lite1").input_size, None, "avg"),
        ("lite2", "efficientnet_lite2", get_backbone("efficientnet_lite2").input_size, None, "avg"),
        ("squeezenet 3 layers, avg", "squeezenet", 128, SQUEEZENET_LAYERS, "avg"),
        ("squeezenet 3 layers, avgmax", "squeezenet", 128, SQUEEZENET_LAYERS, "avgmax"),
    ]
    rows = []
    for label, backbone, size, layers, pool in cases:
        extra = [x for layer in layers for x in ("--layer", layer)] if layers else []
        exp = f"new-{backbone}-{'multi' if layers else 'single'}-{pool}"
        log(f"new feature sets: {label} ({backbone} {size} px) on {2 * per_class + n_test} photos")
        weights = str(SQUEEZENET_H5) if backbone == "squeezenet" else "imagenet"
        r = features_end_to_end(data, work, backbone=backbone, weights=weights, size=size, batch=32, exp=exp,
                                extra=extra, pool=pool)
        row = {"case": label, "backbone": backbone, "size": size, "batch": 32, "layers": list(layers or ["last"]),
               "pool": pool, **r}
        if layers:  # every set of the pass is on disk; their records share the pass's figures
            spec = get_backbone(backbone)
            widths = {}
            for layer in layers:
                name = default_feature_set_name(spec.name, input_size=spec.input_size, image_size=size,
                                                layer=None if layer == "last" else layer, pool=pool)
                fs = load_features(features_dir(experiment_dir(exp, root=work), name))
                widths[name] = fs.width
            row["feature_sets"] = widths
        rows.append(row)
    single = rows[0]["images_per_second"]
    for row in rows:
        row["over_lite0_single"] = round(row["images_per_second"] / single, 3)
    return rows


# ----------------------------------------------------------------------------------------------- report
SECTIONS = {
    "extraction": bench_extraction,
    "extraction_memory": bench_extraction_memory,
    "kaggle_size": bench_later_stages,
    "quality": bench_quality,
    "quality_options": bench_quality_options,
    "ray": bench_ray,
    "new_feature_sets": bench_new_feature_sets,
}


def print_table(results: dict) -> None:
    if "extraction" in results:
        _print_extraction(results)
    if "extraction_memory" in results:
        m = results["extraction_memory"]
        print(f"\n== extraction memory (squeezenet): peak RSS {m['peak_rss_mib'][0]:.0f} MiB at {m['images'][0]} "
              f"images, {m['peak_rss_mib'][1]:.0f} MiB at {m['images'][1]} images (ratio {m['growth_ratio']})")
    if "kaggle_size" in results:
        _print_kaggle_size(results["kaggle_size"])
    if "quality" in results:
        _print_quality(results["quality"])
    if "quality_options" in results:
        _print_quality_options(results["quality_options"])
    if "ray" in results:
        _print_ray(results["ray"])
    if "new_feature_sets" in results:
        _print_new_feature_sets(results["new_feature_sets"])
    print(f"\n{results['seconds']:.0f} s in all")


def _print_extraction(results: dict) -> None:
    print("\n== extraction (images/s; same photos, size, batch 32, model)")
    print(f"{'backbone':<12}{'size':>5}{'end-to-end':>12}{'model only':>12}{'classic':>10}{'e2e/model':>11}"
          f"{'e2e/classic':>12}")
    for r in results["extraction"]:
        print(f"{r['backbone']:<12}{r['size']:>5}{r['end_to_end']['images_per_second']:>12.1f}"
              f"{r['model_only']['images_per_second']:>12.1f}{r['classic']['images_per_second']:>10.1f}"
              f"{r['e2e_over_model_only']:>11.3f}{r['e2e_over_classic']:>12.3f}")


def _print_kaggle_size(k: dict) -> None:
    print(f"\n== Kaggle-size later stages ({k['n_train']} train / {k['n_test']} test, 3 x 2048 features)")
    for step in ("cv", "blend", "submit"):
        print(f"{step:<8}{k[step]['seconds']:>8.1f} s   peak RSS {k[step]['peak_rss_mib']:>7.0f} MiB")
    for line in k["cv"].get("table", []):
        print(f"    {line}")
    if "sklearn_comparison" in k:
        print()
        print_comparison(k["sklearn_comparison"])


def _print_quality(q: dict) -> None:
    print("\n== quality on dogs-vs-cats-mini (submission log loss against the answer key)")
    print(f"kit default pipeline (squeezenet + efficientnet_lite0, flip TTA, cv, blend, auto clip): "
          f"{q['kit_submission_logloss']:.5f}")
    for name, loss in q["classic_recipe_logloss"].items():
        print(f"classic recipe on {name} features (logistic regression, clip 0.005): {loss:.5f}")
    for line in q["ladder"]:
        print(f"    {line}")


def _print_quality_options(q: dict) -> None:
    print("\n== cv --pseudo and features --views (Lite0 320 px, logreg + mlp, blend; test: answer key, report only)")
    print(f"{'data':<20}{'views':<34}{'pseudo':<8}{'blend OOF':>10}{'test':>9}{'acc':>8}{'img/s':>7}{'cv s':>7}")
    for r in q["rows"]:
        print(f"{r['data']:<20}{r['views']:<34}{'yes' if r['pseudo'] else 'no':<8}{r['blend_oof_logloss']:>10.5f}"
              f"{r['test_logloss']:>9.5f}{r['test_accuracy']:>8.2%}{r['extract_img_per_s'] or 0:>7.1f}"
              f"{r['cv_seconds']:>7.1f}")


def _print_ray(r: dict) -> None:
    print(f"\n== Ray engine vs local ({r['backbone']}, {r['images']} photos, shards of {r['shard_size']}, "
          f"{r['cpus']} CPUs; load average {r['load_before'][0]} before, {r['load_after'][0]} after)")
    print(f"{'engine':<16}{'img/s':>8}{'/local':>8}{'start s':>9}{'wall s':>8}{'shard s (median)':>18}"
          f"{'worker img/s':>14}")
    for case in ("local", "ray_1_worker", "ray_2_workers"):
        x, e = r[case], r[case]["engine"]
        start = e.get("startup_seconds", e.get("build_seconds", 0) + e.get("warmup_seconds", 0))
        print(f"{case:<16}{x['images_per_second']:>8.1f}{x.get('over_local', 1.0):>8.3f}{start:>9.1f}"
              f"{x['wall_seconds']:>8.1f}{e.get('shard_seconds_median', float('nan')):>18.3f}"
              f"{e.get('worker_images_per_second', float('nan')):>14.1f}")


def _print_new_feature_sets(rows: list[dict]) -> None:
    print(f"\n== new feature sets, end to end ({rows[0]['images']} mini photos, batch 32, no flip)")
    print(f"{'case':<28}{'size':>5}{'img/s':>8}{'/lite0':>8}{'wall s':>8}{'peak MiB':>10}")
    for r in rows:
        print(f"{r['case']:<28}{r['size']:>5}{r['images_per_second']:>8.1f}{r['over_lite0_single']:>8.3f}"
              f"{r['wall_seconds']:>8.1f}{r['peak_rss_mib']:>10.0f}")
        if "feature_sets" in r:
            print("    sets: " + ", ".join(f"{k} ({v} wide)" for k, v in r["feature_sets"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description="kaggle-kit benchmarks")
    ap.add_argument("--quick", action="store_true", help="small sizes, for checking the bench itself")
    ap.add_argument("--only", choices=tuple(SECTIONS), action="append",
                    help="run only this section (repeatable); results go to results-<sections>.json")
    args = ap.parse_args()
    sections = args.only or list(SECTIONS)
    if not MINI.is_dir():
        sys.exit(f"bench: the mini competition is missing at {MINI}; ../shared must sit beside the checkout")
    work = OUT / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    results = {"machine": {"cpus": os.cpu_count()}}
    for name in sections:
        results[name] = SECTIONS[name](work, quick=args.quick)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["quick"] = args.quick
    OUT.mkdir(parents=True, exist_ok=True)
    name = "results.json" if args.only is None else f"results-{'-'.join(sections)}.json"
    (OUT / name).write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print_table(results)


if __name__ == "__main__":
    main()
