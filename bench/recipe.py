"""Intermediate-layer features, several layers from one decode and one forward pass, written as kit feature sets.

The experiment behind the recommended recipe for a new competition (issue 14): for a backbone port and an input
size, a ``keras.Model`` from the uint8 input to the global-average-pooled outputs of every stage end at once
(see :func:`stage_ends`), fed by the kit's own decoder (:func:`kaggle_kit.images.iter_batches`, area/bilinear
resizing, RGB uint8) and the backbone's own in-graph preprocessing, with the horizontally flipped view as
``kaggle-kit features --tta flip`` makes it. Each layer is written with
:func:`kaggle_kit.features.write_feature_set` into ``experiments/<exp>/features/<tag>_<size>_<layer>/``, so
``kaggle-kit cv --exp <exp>`` and ``kaggle-kit blend --exp <exp>`` score them out of fold like any other set.
The extraction rate (images per second, end to end, both views, all layers of the pass) goes into
``experiments/<exp>/recipe-extraction.json``.

    PYTHONPATH=$PWD .venv/bin/python bench/recipe.py extract --data ../shared/data/malaria-mini \\
        --positive Parasitized --exp malaria-recipe --backbone efficientnet_lite0 --size 128 --size 224
    PYTHONPATH=$PWD .venv/bin/python bench/recipe.py layers --backbone efficientnet_lite0
    PYTHONPATH=$PWD .venv/bin/python bench/recipe.py grouped --exp malaria-recipe --model lite0_128_s5__logreg

``grouped`` re-scores feature sets with a fold plan grouped by patient (malaria-mini's file names carry the
slide/patient id before ``ThinF``/``thinF``): evidence on how optimistic the by-cell plan is, nothing more.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kaggle_kit.artifacts import KitError, read_json, write_json_atomic
from kaggle_kit.store import experiment_dir, experiment_metric, features_dir, load_experiment, oof_key

REPO = Path(__file__).resolve().parent.parent
# Short tags for the feature-set names (cv's table stays readable): lite0_128_s5, squeezenet_160_fire7.
TAGS = {"efficientnet_lite0": "lite0", "efficientnet_lite1": "lite1", "efficientnet_lite2": "lite2",
        "squeezenet": "squeezenet"}
SQUEEZENET_H5 = REPO.parent / "shared" / "weights" / "squeezenet_v1.1" / "squeezenet_v1.1_imagenet_notop.h5"


@dataclass(frozen=True)
class Cut:
    """A layer to pool: ``short`` names the feature set, ``layer`` is the Keras layer name in the base model."""

    short: str
    layer: str
    width: int


def stage_ends(base) -> list[Cut]:
    """The layers worth cutting at in a port: the end of every stage, plus the last one before pooling.

    EfficientNet-Lite: block i's output is ``blocks_<i>_add`` (a repeated block, with its skip) or
    ``blocks_<i>_bn2`` (a stage's first block, no skip); a stage ends where the next block's width changes.
    ``s<k>`` is stage k's output (narrow, linear bottleneck); ``s<k>x`` is the same point expanded: the ReLU6
    output of the next block's 1x1 expansion (6x wider, the richer view of the same stage); ``head`` is the
    1280-wide ReLU6 output of the head conv (the default feature set's layer).
    SqueezeNet: ``fire<n>`` is fire module n's concatenated output.
    """
    names = {layer.name: layer for layer in base.layers}
    cuts: list[Cut] = []
    if "conv1" in names and "fire2_concat" in names:  # SqueezeNet v1.1
        for n in range(2, 10):
            layer = names[f"fire{n}_concat"]
            cuts.append(Cut(f"fire{n}", layer.name, int(layer.output.shape[-1])))
        return cuts
    outs = []
    i = 0
    while f"blocks_{i}_bn2" in names:
        outs.append(names.get(f"blocks_{i}_add") or names[f"blocks_{i}_bn2"])
        i += 1
    if not outs:
        raise KitError(f"{base.name}: no EfficientNet-Lite blocks or SqueezeNet fire modules found")
    stage = 0
    for i, layer in enumerate(outs):
        width = int(layer.output.shape[-1])
        if i + 1 < len(outs) and int(outs[i + 1].output.shape[-1]) == width:
            continue
        stage += 1
        cuts.append(Cut(f"s{stage}", layer.name, width))
        expanded = names.get(f"blocks_{i + 1}_bn0_relu6")
        if expanded is not None:
            cuts.append(Cut(f"s{stage}x", expanded.name, int(expanded.output.shape[-1])))
    head = names["bn1_relu6"]
    cuts.append(Cut("head", head.name, int(head.output.shape[-1])))
    return cuts


def build_multi_extractor(backbone: str, *, image_size: int, weights: str, shorts: list[str] | None):
    """uint8 RGB (batch, s, s, 3) -> [(batch, width) per cut]: the backbone's in-graph preprocessing, then the
    base model's named layers, each global-average-pooled; returns ``(model, cuts)``."""
    from kaggle_kit.backbones import build_base, get_backbone, preprocess_layer, resolve_weights

    from kaggle_kit.keras_loader import load_keras

    keras = load_keras()
    spec = get_backbone(backbone)
    base = build_base(spec, image_size=image_size, weights=resolve_weights(spec, weights))
    cuts = stage_ends(base)
    if shorts:
        known = {c.short: c for c in cuts}
        unknown = [s for s in shorts if s not in known]
        if unknown:
            raise KitError(f"--layer {unknown[0]!r} is not a cut of {backbone}; choose from: {', '.join(known)}")
        cuts = [known[s] for s in shorts]
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"gap_{c.short}")(base.get_layer(c.layer).output)
              for c in cuts]
    inner = keras.Model(base.input, pooled, name=f"{spec.name}_cuts")
    inner.trainable = False
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="rgb_uint8")
    outputs = inner(preprocess_layer(spec.preprocess)(inputs), training=False)
    return keras.Model(inputs, outputs, name=f"{spec.name}_multi"), cuts


def extract(paths: list[Path], model, *, image_size: int, batch_size: int, flip: bool, n_cuts: int):
    """Run every image (and its mirror image) through ``model``; return per cut (plain, flipped) float32 arrays
    and the ok mask. Batches are padded to ``batch_size`` (no retracing), as the kit's extractor does."""
    from kaggle_kit.images import iter_batches

    plain = [[] for _ in range(n_cuts)]
    mirrored = [[] for _ in range(n_cuts)]
    oks = []

    def run(batch):
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        out = model.predict_on_batch(batch)
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o, dtype=np.float32)[:n] for o in out]

    for batch, ok in iter_batches(paths, size=image_size, batch_size=batch_size):
        for k, f in enumerate(run(batch)):
            plain[k].append(f)
        if flip:
            for k, f in enumerate(run(np.ascontiguousarray(batch[:, :, ::-1]))):
                mirrored[k].append(f)
        oks.append(ok)
    cat = lambda parts: [np.concatenate(p) for p in parts] if parts and parts[0] else None  # noqa: E731
    return cat(plain), cat(mirrored), np.concatenate(oks)


def cmd_extract(args) -> None:
    from kaggle_kit.data import discover
    from kaggle_kit.features import write_feature_set
    from kaggle_kit.keras_loader import load_keras
    from kaggle_kit.store import remember_data

    keras = load_keras()
    dataset = discover(args.data, positive=args.positive)
    exp_dir = experiment_dir(args.exp)
    exp_dir.mkdir(parents=True, exist_ok=True)
    remembered = load_experiment(exp_dir)  # the data folder as read now; a metric the experiment has is kept
    remember_data(exp_dir, dataset, metric=remembered.metric if remembered is not None else None)
    weights = args.weights or ("imagenet" if args.backbone != "squeezenet" else str(SQUEEZENET_H5))
    tag = TAGS.get(args.backbone, args.backbone)
    log_path = exp_dir / "recipe-extraction.json"
    log = read_json(log_path) if log_path.exists() else {}
    paths = dataset.train_paths() + dataset.test_paths()
    for size in args.size:
        model, cuts = build_multi_extractor(args.backbone, image_size=size, weights=weights, shorts=args.layer)
        model.predict_on_batch(np.zeros((args.batch_size, size, size, 3), np.uint8))  # compile outside the clock
        t0 = time.perf_counter()
        plain, mirrored, ok = extract(paths, model, image_size=size, batch_size=args.batch_size,
                                      flip=not args.no_flip, n_cuts=len(cuts))
        seconds = time.perf_counter() - t0
        if not ok.all():
            raise KitError(f"{int((~ok).sum())} images could not be decoded; this script expects clean data")
        rate = len(paths) / seconds
        n = dataset.n_train
        for k, cut in enumerate(cuts):
            arrays = {"train": plain[k][:n], "test": plain[k][n:]}
            if mirrored is not None:
                arrays.update(train_flip=mirrored[k][:n], test_flip=mirrored[k][n:])
            name = f"{tag}_{size}_{cut.short}"
            note = (f"bench/recipe.py: {args.backbone} {weights} at {size} px, layer {cut.layer} ({cut.short}), "
                    f"global average pooled, flip={'no' if args.no_flip else 'yes'}")
            write_feature_set(features_dir(exp_dir, name), dataset, arrays, backbone=args.backbone, note=note)
            log[name] = {"backbone": args.backbone, "size": size, "layer": cut.layer, "short": cut.short,
                         "width": cut.width, "img_per_s": round(rate, 2), "seconds": round(seconds, 1),
                         "layers_in_pass": len(cuts), "flip": not args.no_flip,
                         "keras_backend": keras.backend.backend()}
        write_json_atomic(log_path, log)
        print(f"{tag} {size} px: {len(paths)} images x{1 if args.no_flip else 2} views, {len(cuts)} layers "
              f"({', '.join(c.short + ':' + str(c.width) for c in cuts)}) in {seconds:.1f} s = {rate:.1f} img/s",
              flush=True)
        del model
        keras.backend.clear_session()


def cmd_speed(args) -> None:
    """Extraction img/s of several configurations back to back in one process (so that their ratios are
    comparable on a shared machine): each ``--config backbone:size`` through the same decoder, batch and
    flip view as ``extract``, on the first ``--images`` training images, best of ``--rounds`` runs."""
    from kaggle_kit.data import discover
    from kaggle_kit.keras_loader import load_keras

    keras = load_keras()

    dataset = discover(args.data, positive=args.positive)
    paths = (dataset.train_paths() + dataset.test_paths())[:args.images]
    models = {}
    for config in args.config:
        backbone, _, size = config.partition(":")
        weights = "imagenet" if backbone != "squeezenet" else str(SQUEEZENET_H5)
        model, cuts = build_multi_extractor(backbone, image_size=int(size), weights=weights, shorts=None)
        model.predict_on_batch(np.zeros((args.batch_size, int(size), int(size), 3), np.uint8))
        models[config] = (model, int(size), len(cuts))
    best = {c: 0.0 for c in models}
    for _ in range(args.rounds):
        for config, (model, size, n_cuts) in models.items():  # interleaved: load changes hit every config alike
            t0 = time.perf_counter()
            extract(paths, model, image_size=size, batch_size=args.batch_size, flip=True, n_cuts=n_cuts)
            best[config] = max(best[config], len(paths) / (time.perf_counter() - t0))
    result = {c: round(r, 1) for c, r in best.items()}
    for c, r in result.items():
        print(f"{c:<28}{r:>8.1f} img/s (both views, all cuts)")
    print(f"machine: load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"Keras {keras.__version__} on {keras.backend.backend()}")
    if args.out:
        write_json_atomic(Path(args.out), result)


def cmd_layers(args) -> None:
    from kaggle_kit.backbones import build_base, get_backbone, resolve_weights

    spec = get_backbone(args.backbone)
    base = build_base(spec, image_size=args.image_size, weights=resolve_weights(spec, "none"))
    for cut in stage_ends(base):
        shape = base.get_layer(cut.layer).output.shape
        print(f"{cut.short:<8}{cut.layer:<28}{cut.width:>6}   map {shape[1]}x{shape[2]} at {args.image_size} px")


# ---------------------------------------------------------------------------------------- grouped evidence
PATIENT = re.compile(r"^(?:50x50)?(?P<patient>.+?)thin", re.IGNORECASE)


def patient_of(train_file: str) -> str:
    """malaria-mini's slide/patient id: the file name's part before ThinF/thinF (after the '50x50' prefix).

    subtle: a few names have 'thin_original' or 'thinOriginal...' instead ('C3thin_original_IMG_...'): the part
    before 'thin' in any case is taken, so 'C47P8ThinF' and 'C47P8thinOriginal' fall in one group.
    """
    m = PATIENT.match(Path(train_file).name)
    if not m:
        raise KitError(f"cannot find a patient id in {train_file!r} (no 'thin' in it)")
    return m.group("patient")


def grouped_plan(dataset, *, n_folds: int, seed: int) -> np.ndarray:
    """int8 (1, n): StratifiedGroupKFold by patient, so no patient has cells in both training and held-out folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = [patient_of(f) for f in dataset.train_files]
    split = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    plan = np.empty((1, dataset.n_train), dtype=np.int8)
    for k, (_, held) in enumerate(split.split(np.zeros(dataset.n_train), dataset.y, groups)):
        plan[0, held] = k
    return plan


def ladder_line(ladder) -> str:
    """``single 0.01234  blend ...  calibrated ...  clipped ...``: the steps the blend ran in its metric (log
    loss has all four; accuracy no clip; AUC neither calibration nor clip)."""
    return "  ".join(f"{'single' if step == 'best single model' else step} {value:.5f}" for step, value in ladder)


def cmd_grouped(args) -> None:
    """Score feature sets (logreg head, flip TTA as cv uses it) on a patient-grouped plan and on the by-cell one,
    in the experiment's metric; then the kit's crossfit blend of the given sets on each plan. Writes nothing
    into the experiment."""
    from kaggle_kit.blend import crossfit_blend
    from kaggle_kit.cv import TTA_PREDICT, TTA_TRAIN, cross_validate
    from kaggle_kit.data import discover_remembered
    from kaggle_kit.store import load_features, load_plan

    exp_dir = experiment_dir(args.exp)
    remembered = load_experiment(exp_dir)
    if remembered is None:
        raise KitError(f"experiment {exp_dir} remembers no data folder; run 'bench/recipe.py extract --exp {args.exp}"
                       " ...' first")
    metric = experiment_metric(exp_dir)
    dataset = discover_remembered(remembered)
    plans = {"patient": grouped_plan(dataset, n_folds=args.folds, seed=args.seed),
             "cell": load_plan(exp_dir).plan[:1]}
    groups = np.array([patient_of(f) for f in dataset.train_files])
    print(f"{len(set(groups))} patients in {dataset.n_train} training cells; patient-grouped plan: fold sizes "
          f"{np.bincount(plans['patient'][0]).tolist()}, positives per fold "
          f"{[int(dataset.y[plans['patient'][0] == k].sum()) for k in range(args.folds)]}; metric {metric}")
    oofs = {p: [] for p in plans}
    rows = []
    for name in args.set:
        fs = load_features(features_dir(exp_dir, name), image_list_hash=dataset.image_list_hash())
        flip = fs.tta == "flip"
        views = [np.asarray(fs.arrays["train"])] + ([np.asarray(fs.arrays["train_flip"])] if flip else [])
        tviews = [np.asarray(fs.arrays["test"])] + ([np.asarray(fs.arrays["test_flip"])] if flip else [])
        row = {"set": name}
        for p, plan in plans.items():
            out = cross_validate(views, fs.y, plan, tviews, head="logreg", tta_train=flip and TTA_TRAIN,
                                 tta_predict=flip and TTA_PREDICT, seed=0)
            row[p] = out.scores[oof_key(metric)]
            row[p + "_acc"] = out.scores["oof_accuracy"]
            oofs[p].append(out.oof[0])
        rows.append(row)
        print(f"{name:<28} by patient {row['patient']:.5f} ({row['patient_acc']:.2%})   "
              f"by cell {row['cell']:.5f} ({row['cell_acc']:.2%})", flush=True)
    result = {"metric": metric, "sets": rows}
    if len(args.set) > 1:
        for p, plan in plans.items():
            res = crossfit_blend(np.stack(oofs[p], axis=1), dataset.y, plan[0], metric=metric)
            ladder = " -> ".join(f"{step} {value:.5f}" for step, value in res.ladder)
            print(f"blend on the {p} plan ({res.blender.method}): {ladder}")
            result[f"blend_{p}"] = dict(res.ladder)
    if args.out:
        write_json_atomic(Path(args.out), result)


def cmd_screen(args) -> None:
    """Score candidate models out of fold on the experiment's own plan, in its metric, without writing them:
    each ``--model`` is ``set[+set...]:head`` (several sets side by side, as cv's concat head), fitted by the
    kit's :func:`kaggle_kit.cv.cross_validate` with cv's flip-TTA defaults. A cheap screen before running the
    chosen ones through ``kaggle-kit cv``; with ``--blend`` the kit's cross-fitted blend of the screened models
    too."""
    from kaggle_kit.blend import crossfit_blend
    from kaggle_kit.cv import TTA_PREDICT, TTA_TRAIN, cross_validate
    from kaggle_kit.store import load_features, load_plan

    exp_dir = experiment_dir(args.exp)
    plan = load_plan(exp_dir)
    metric = experiment_metric(exp_dir)
    key = oof_key(metric)
    cache: dict = {}
    # 'sqrt': signed square root of every feature (power normalisation, Perronnin et al. 2010), an evidence
    # probe for pooled activations that are skewed; not a kit option.
    transform = (lambda X: np.sign(X) * np.sqrt(np.abs(X))) if args.transform == "sqrt" else (lambda X: X)
    oofs, rows = [], []
    for model in args.model:
        sets, _, head = model.partition(":")
        head = head or "logreg"
        members = []
        for name in sets.split("+"):
            if name not in cache:
                fs = load_features(features_dir(exp_dir, name))
                if fs.train_ids != plan.train_ids:
                    raise KitError(f"feature set {name!r} holds other training rows than the fold plan of "
                                   f"{exp_dir}; extract it again into this experiment")
                cache[name] = fs
            members.append(cache[name])
        flip = all(fs.tta == "flip" for fs in members)
        keys = ("train", "train_flip")[:1 + flip]
        views = [transform(np.concatenate([np.asarray(fs.arrays[k]) for fs in members], axis=1)) for k in keys]
        tviews = [transform(np.concatenate([np.asarray(fs.arrays[k.replace("train", "test")]) for fs in members],
                                           axis=1)) for k in keys]
        t0 = time.perf_counter()
        out = cross_validate(views, plan.y, plan.plan, tviews, head=head, tta_train=flip and TTA_TRAIN,
                             tta_predict=flip and TTA_PREDICT, seed=plan.seed)
        took = time.perf_counter() - t0
        oofs.append(out.oof[0])
        rows.append({"model": model, "width": views[0].shape[1],
                     **{k: out.scores[k] for k in dict.fromkeys((key, "oof_logloss", "oof_accuracy"))},
                     "seconds": round(took, 1)})
        print(f"{model:<60}{views[0].shape[1]:>6}{out.scores[key]:>10.5f}"
              f"{out.scores['oof_accuracy']:>9.2%}{took:>7.1f} s", flush=True)
    result = {"plan": plan.describe(), "metric": metric, "models": rows}
    if args.blend and len(oofs) > 1:
        res = crossfit_blend(np.stack(oofs, axis=1), plan.y, plan.plan[0], metric=metric)
        weights = ", ".join(f"{m} {w:.2f}" for m, w in zip(args.model, res.blender.weights) if w)
        ladder = " -> ".join(f"{step} {value:.5f}" for step, value in res.ladder)
        print(f"blend ({res.blender.method}): {ladder}\n  weights: {weights}")
        result["blend"] = {"method": res.blender.method, "ladder": dict(res.ladder)}
    if args.out:
        write_json_atomic(Path(args.out), result)


def cmd_ladder(args) -> None:
    """The kit's cross-fitted blend (:func:`kaggle_kit.blend.crossfit_blend`, as 'kaggle-kit blend' runs it, in
    the experiment's metric) over a subset of the experiment's cv models: each ``--recipe
    NAME=PATTERN[,PATTERN...]`` names the models by shell patterns (``lite0_160_s[3-6]x__logreg``). One line
    per recipe; nothing is written."""
    import fnmatch

    from kaggle_kit.blend import crossfit_blend, load_cv_inputs

    exp_dir = experiment_dir(args.exp)
    metric = experiment_metric(exp_dir)
    inputs = load_cv_inputs(exp_dir, warn=lambda m: None)
    y, folds = inputs.folds.y, inputs.folds.plan[0]
    results = {}
    for recipe in args.recipe:
        name, _, patterns = recipe.partition("=")
        chosen = [i for i, m in enumerate(inputs.models) if any(fnmatch.fnmatchcase(m, p) for p in patterns.split(","))]
        if not chosen:
            raise KitError(f"recipe {name!r}: no cv model matches {patterns!r}; the models are: "
                           f"{', '.join(inputs.models)}")
        res = crossfit_blend(inputs.oof[:, chosen], y, folds, metric=metric)
        weights = {inputs.models[i]: round(float(w), 3) for i, w in zip(chosen, res.blender.weights) if w}
        results[name] = {"models": [inputs.models[i] for i in chosen], "method": res.blender.method,
                         "metric": metric, "ladder": dict(res.ladder), "weights": weights}
        print(f"{name:<28}{len(chosen):>4} models  {ladder_line(res.ladder)}  ({res.blender.method})", flush=True)
        if args.verbose:
            print("    " + ", ".join(f"{m} {w}" for m, w in weights.items()))
    if args.out:
        write_json_atomic(Path(args.out), results)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("extract", help="extract stage-end features at one or more sizes into an experiment")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--positive", default="dog")
    p.add_argument("--exp", required=True)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default=None, help="default: imagenet (squeezenet: the shared HDF5 file)")
    p.add_argument("--size", type=int, action="append", required=True)
    p.add_argument("--layer", action="append", default=None, help="short cut name (s3, s4x, head...); default all")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-flip", action="store_true")
    p.set_defaults(fn=cmd_extract)
    p = sub.add_parser("speed", help="img/s of several backbone:size configurations, back to back")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--positive", default="dog")
    p.add_argument("--config", action="append", required=True, help="backbone:size")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_speed)
    p = sub.add_parser("layers", help="list a backbone's cuts with their widths")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224)
    p.set_defaults(fn=cmd_layers)
    p = sub.add_parser("grouped", help="score feature sets on a patient-grouped plan beside the by-cell plan")
    p.add_argument("--exp", required=True)
    p.add_argument("--set", action="append", required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_grouped)
    p = sub.add_parser("screen", help="score candidate models (set[+set]:head) out of fold, writing nothing")
    p.add_argument("--exp", required=True)
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--blend", action="store_true")
    p.add_argument("--transform", choices=("none", "sqrt"), default="none")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_screen)
    p = sub.add_parser("ladder", help="the kit's cross-fitted blend over subsets of the cv models")
    p.add_argument("--exp", required=True)
    p.add_argument("--recipe", action="append", required=True, help="NAME=PATTERN[,PATTERN...]")
    p.add_argument("--verbose", "-v", action="store_true")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_ladder)
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except KitError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
