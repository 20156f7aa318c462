"""Screen, ladder and speed: three experiment tools on top of the kit, for choosing a recipe (issue 14).

The features come from the kit itself: ``kaggle-kit features --layer NAME`` (repeatable: several layers of one
backbone from one decode and one forward pass, each its own feature set), ``--views N --view-kind
crops|rotations`` (augmented views beside the flip view); ``kaggle-kit backbones --layers BACKBONE`` lists where
a backbone can be cut (the EfficientNet-Lites: ``block1``..``block7``, and ``block1x``..``block6x`` expanded by
the next block's 1x1 conv); ``kaggle-kit cv --groups REGEX`` makes group-wise folds. bench/recipe-results.md has
the figures and the recipe as kit commands. This script adds what the kit does not do:

- ``screen``: score candidate models (``set[+set...]:head``) out of fold with the kit's
  :func:`kaggle_kit.cv.cross_validate`, writing nothing: on every view the sets share, as ``cv`` does, on the
  experiment's fold plan or (``--groups REGEX``) on a group-wise plan made like ``cv --groups`` would;
  ``--power P``: the logreg head's power normalisation (default: the kit's, ``LogregSettings.power``; 1 turns
  it off); ``--blend``: the kit's cross-fitted blend of the screened models; ``--prune P``: each outer fold's
  model is fitted without the training rows its own nested cross-validation flags as mislabelled
  (:func:`pruned_oof`), the label-noise remedy a competitor tries first.
- ``ladder``: the kit's cross-fitted blend over subsets of the experiment's cv models, in its metric.
- ``speed``: extraction img/s of several ``backbone:size`` configurations back to back in one process, through
  the kit's own extractor (:func:`kaggle_kit.engine.build_predictor`, :func:`kaggle_kit.engine.predict_batches`:
  flip view, optional ``--views``, the ``--layer``s of every config), interleaved rounds, best of rounds.

    PYTHONPATH=$PWD .venv/bin/python bench/recipe.py screen --exp malaria-recipe \\
        --model efficientnet_lite1_160-block5x --model efficientnet_lite1_160-block5x:mlp --blend
    PYTHONPATH=$PWD .venv/bin/python bench/recipe.py screen --exp malaria-recipe --groups '^(.*?)[Tt]hin' \\
        --model efficientnet_lite1_160-block5x
    PYTHONPATH=$PWD .venv/bin/python bench/recipe.py ladder --exp malaria-recipe \\
        --recipe 'recipe=efficientnet_lite1_160-*__logreg,squeezenet_128-*__logreg'
    PYTHONPATH=$PWD .venv/bin/python bench/recipe.py speed --data ../shared/data/malaria-mini \\
        --positive Parasitized --config efficientnet_lite0:128 --config efficientnet_lite1:160 \\
        --layer block5x --layer last
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

from kaggle_kit.artifacts import KitError, write_json_atomic
from kaggle_kit.store import experiment_dir, experiment_metric, features_dir, load_experiment, oof_key

REPO = Path(__file__).resolve().parent.parent
SQUEEZENET_H5 = REPO.parent / "shared" / "weights" / "squeezenet_v1.1" / "squeezenet_v1.1_imagenet_notop.h5"


def ladder_line(ladder) -> str:
    """``single 0.01234  blend ...  calibrated ...  clipped ...``: the steps the blend ran in its metric (log
    loss has all four; accuracy no clip; AUC neither calibration nor clip)."""
    return "  ".join(f"{'single' if step == 'best single model' else step} {value:.5f}" for step, value in ladder)


def training_groups(exp_dir: Path, plan, pattern: str) -> list[str]:
    """The group of each training row of ``plan`` under ``--groups PATTERN``, from the training files of the data
    folder the experiment remembers."""
    from kaggle_kit.data import discover_remembered
    from kaggle_kit.folds import file_groups
    from kaggle_kit.store import experiment_data

    if load_experiment(exp_dir) is None:
        raise KitError(f"--groups needs the training files' names, but experiment {exp_dir} remembers no data "
                       "folder; run 'kaggle-kit features --data DIR' into it first")
    dataset = discover_remembered(experiment_data(exp_dir))
    if tuple(dataset.train_ids) != plan.train_ids:
        raise KitError(f"the data folder {dataset.data_dir} now holds other training images than the fold plan of "
                       f"{exp_dir}; re-run 'kaggle-kit cv --exp {exp_dir.name}'")
    return file_groups(dataset.train_files, pattern)


def pruned_oof(views, y: np.ndarray, plan: np.ndarray, test_views, *, below: float, groups=None,
               inner_folds: int = 5, seed: int, **fit) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions (repeats, n) of a model fitted, for each outer fold, without the training rows that
    a cross-validation nested in that fold's training rows (``inner_folds`` folds, group-wise when ``groups``
    (n,) is given, as :func:`kaggle_kit.folds.make_plan` makes them) predicts at P(given label) < ``below``;
    and the rows each outer fold left out, (repeats, folds, n) bool. The held-out fold's labels play no part in
    what is flagged. ``fit``: the keyword arguments of :func:`kaggle_kit.cv.cross_validate` (head, settings, TTA)."""
    from kaggle_kit.cv import cross_validate
    from kaggle_kit.folds import make_plan

    oof = np.full(plan.shape, np.nan)
    flagged = np.zeros((len(plan), int(plan.max()) + 1, plan.shape[1]), dtype=bool)
    for r, folds in enumerate(plan):
        for k in np.unique(folds):
            train = np.flatnonzero(folds != k)
            inner_plan = make_plan(y[train], n_folds=inner_folds, repeats=1, seed=seed + r,
                                   groups=None if groups is None else [groups[i] for i in train])
            inner = cross_validate([v[train] for v in views], y[train], inner_plan, [v[:1] for v in views],
                                   seed=seed + r, **fit).oof[0]
            drop = train[np.where(y[train] == 1, inner, 1.0 - inner) < below]
            flagged[r, k, drop] = True
            usable = np.ones(len(y), dtype=bool)
            usable[drop] = False
            held_out = folds == k  # fold 0: the held-out rows, fold 1: the kept training rows
            out = cross_validate(views, y, held_out[None].astype(np.int64) ^ 1, test_views, usable=usable,
                                 seed=seed + r, **fit)
            oof[r, held_out] = out.oof[0, held_out]
    return oof, flagged


def groupwise_plan(plan, groups: list[str], pattern: str):
    """``plan`` (the experiment's :class:`kaggle_kit.store.FoldPlan`) made again group-wise, as ``kaggle-kit cv
    --groups PATTERN`` would make it (same folds, repeats and seed), from its rows' ``groups``
    (:func:`training_groups`). Written nowhere: the returned plan carries no hash."""
    from kaggle_kit.folds import make_plan

    folds = make_plan(plan.y, n_folds=plan.n_folds, repeats=plan.repeats, seed=plan.seed, groups=groups)
    manifest = {k: v for k, v in plan.manifest.items() if k != "plan_sha256"}
    return dataclasses.replace(plan, plan=folds, manifest={**manifest, "groups": pattern,
                                                           "n_groups": len(set(groups))})


def cmd_screen(args) -> None:
    """Score candidate models out of fold in the experiment's metric, without writing them: each ``--model`` is
    ``set[+set...]:head`` (several sets side by side, as cv's concat head), fitted by the kit's
    :func:`kaggle_kit.cv.cross_validate` on every view its sets share (:func:`kaggle_kit.cv.shared_views`, cv's
    order) with cv's TTA defaults. The plan: the experiment's, or with ``--groups`` a group-wise one (see
    :func:`groupwise_plan`). A cheap screen before running the chosen ones through ``kaggle-kit cv``; with
    ``--blend`` the kit's cross-fitted blend of the screened models too."""
    from kaggle_kit.blend import crossfit_blend
    from kaggle_kit.cv import TTA_PREDICT, TTA_TRAIN, cross_validate, score_oof, shared_views
    from kaggle_kit.store import load_features, load_plan
    from kaggle_kit.views import array_name

    exp_dir = experiment_dir(args.exp)
    plan = load_plan(exp_dir)
    pattern = args.groups or plan.manifest.get("groups")  # --prune's inner folds follow the plan's groups too
    groups = training_groups(exp_dir, plan, pattern) if pattern and (args.groups or args.prune is not None) else None
    if args.groups:
        plan = groupwise_plan(plan, groups, args.groups)
    metric = experiment_metric(exp_dir)
    key = oof_key(metric)
    print(f"fold plan: {plan.describe()}; metric {metric}", flush=True)
    cache: dict = {}
    from kaggle_kit.heads import LogregSettings

    logreg = LogregSettings() if args.power is None else LogregSettings(power=args.power)
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
        suffixes = shared_views(members)
        several = len(suffixes) > 1

        def side_by_side(split: str, suffix: str) -> np.ndarray:
            return np.concatenate([np.asarray(fs.arrays[array_name(split, suffix)]) for fs in members], axis=1)

        views = [side_by_side("train", s) for s in suffixes]
        tviews = [side_by_side("test", s) for s in suffixes]
        t0 = time.perf_counter()
        fit = {"head": head, "tta_train": several and TTA_TRAIN, "tta_predict": several and TTA_PREDICT,
               "settings": logreg if head == "logreg" else None}
        out = cross_validate(views, plan.y, plan.plan, tviews, seed=plan.seed, **fit)
        scores, pruned = out.scores, ""
        if args.prune is not None:
            oof, flagged = pruned_oof(views, plan.y, plan.plan, tviews, below=args.prune, groups=groups,
                                      seed=plan.seed, **fit)
            scores = score_oof(plan.y, oof.astype(np.float32), plan.plan, np.ones(len(plan.y), dtype=bool))
            per_fold = flagged.sum() / flagged.shape[0] / flagged.shape[1]
            pruned = f"  (pruned at P < {args.prune:g}: {per_fold:.1f} training rows a fold)"
        took = time.perf_counter() - t0
        oofs.append(out.oof[0])
        rows.append({"model": model, "width": views[0].shape[1], "views": len(views),
                     **{k: scores[k] for k in dict.fromkeys((key, "oof_logloss", "oof_accuracy"))},
                     "seconds": round(took, 1)})
        print(f"{model:<60}{views[0].shape[1]:>6}{len(views):>3} views{scores[key]:>10.5f}"
              f"{scores['oof_accuracy']:>9.2%}{took:>7.1f} s{pruned}", flush=True)
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
    NAME=PATTERN[,PATTERN...]`` names the models by shell patterns (``efficientnet_lite0_160-block[3-6]x__logreg``).
    One line per recipe; nothing is written."""
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


def cmd_speed(args) -> None:
    """Extraction img/s of several configurations back to back in one process (so that their ratios are
    comparable on a shared machine): each ``--config backbone:size`` built by the kit
    (:func:`kaggle_kit.engine.build_predictor` with the ``--layer``s, compiled before the clock) and run through
    its decode-and-predict loop (:func:`kaggle_kit.engine.predict_batches`, flip TTA, ``--views``) on the first
    ``--images`` images, rounds interleaved (load changes hit every config alike), best of ``--rounds``."""
    from kaggle_kit.backbones import get_backbone, resolve_weights
    from kaggle_kit.data import discover
    from kaggle_kit.engine import build_predictor, predict_batches
    from kaggle_kit.views import view_names

    if args.images < 1 or args.rounds < 1 or args.batch_size < 1:
        raise KitError(f"--images {args.images}, --rounds {args.rounds} and --batch-size {args.batch_size} must each "
                       "be 1 or more", code=2)
    views = view_names(args.views, args.view_kind)
    layers = args.layer or [None]
    dataset = discover(args.data, positive=args.positive)
    paths = (dataset.train_paths() + dataset.test_paths())[:args.images]
    built = {}
    for config in args.config:
        name, _, size_text = config.partition(":")
        spec = get_backbone(name)
        try:
            size = int(size_text) if size_text else spec.input_size
        except ValueError:
            raise KitError(f"--config {config!r}: the size must be a whole number of pixels, as in {name}:224",
                           code=2) from None
        weights = args.weights or (str(SQUEEZENET_H5) if spec.name == "squeezenet" else "imagenet")
        predictor = build_predictor(spec, image_size=size, weights=resolve_weights(spec, weights, image_size=size),
                                    batch_size=args.batch_size, layers=layers, pool=args.pool)
        built[config] = (predictor, size)
    best = dict.fromkeys(built, 0.0)
    decoded = {}
    for _ in range(args.rounds):
        for config, (predictor, size) in built.items():
            t0 = time.perf_counter()
            ok = [ok for _, ok in predict_batches(predictor.predict, paths, width=predictor.width, image_size=size,
                                                  batch_size=args.batch_size, tta="flip", workers=None,
                                                  views=views)]
            best[config] = max(best[config], len(paths) / (time.perf_counter() - t0))
            decoded[config] = int(np.concatenate(ok).sum())
    n_views = 2 * (1 + len(views))
    predictor = next(iter(built.values()))[0]
    print(f"{len(paths)} images x {n_views} views, layers {', '.join(args.layer or ['(default features)'])}, "
          f"--pool {args.pool}")
    for config, rate in best.items():
        widths = "+".join(map(str, built[config][0].widths))
        print(f"{config:<28}{rate:>8.1f} img/s   width {widths}")
    print(f"machine: load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"Keras {predictor.keras_version} on {predictor.keras_backend}")
    if args.out:
        write_json_atomic(Path(args.out), {
            "img_per_s": {c: round(r, 1) for c, r in best.items()},
            "widths": {c: list(p.widths) for c, (p, _) in built.items()},
            "decoded": decoded, "images": len(paths), "views": n_views, "view_names": list(views),
            "layers": args.layer or [], "pool": args.pool, "rounds": args.rounds, "batch_size": args.batch_size,
            "keras_backend": predictor.keras_backend, "keras_version": predictor.keras_version,
        })


def main(argv=None) -> None:
    from kaggle_kit.backbones import POOLS
    from kaggle_kit.views import DEFAULT_VIEW_KIND, VIEW_KINDS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("screen", help="score candidate models (set[+set]:head) out of fold, writing nothing")
    p.add_argument("--exp", required=True)
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--blend", action="store_true")
    p.add_argument("--power", type=float, default=None, help="logreg power normalisation (default: the kit's)")
    p.add_argument("--groups", default=None, metavar="REGEX",
                   help="score on a group-wise plan (as 'kaggle-kit cv --groups REGEX' makes it) instead of the "
                        "experiment's; same folds, repeats and seed")
    p.add_argument("--prune", type=float, default=None, metavar="P",
                   help="also score each model fitted without the training rows a nested cross-validation "
                        "predicts at P(given label) < P (its inner folds group-wise when the plan is)")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_screen)
    p = sub.add_parser("ladder", help="the kit's cross-fitted blend over subsets of the cv models")
    p.add_argument("--exp", required=True)
    p.add_argument("--recipe", action="append", required=True, help="NAME=PATTERN[,PATTERN...]")
    p.add_argument("--verbose", "-v", action="store_true")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_ladder)
    p = sub.add_parser("speed", help="img/s of several backbone:size configurations, back to back")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--positive", default="dog")
    p.add_argument("--config", action="append", required=True, help="backbone:size (size default: the backbone's)")
    p.add_argument("--layer", action="append", default=None,
                   help="a layer of every config (repeatable; 'kaggle-kit backbones --layers BACKBONE'); "
                        "default: the default features only")
    p.add_argument("--weights", default=None,
                   help="for every config: imagenet, none or a file (default: imagenet; squeezenet: the shared "
                        "HDF5 file)")
    p.add_argument("--views", type=int, default=0, help="extra views, as 'kaggle-kit features --views N'")
    p.add_argument("--pool", choices=POOLS, default="avg", help="as 'kaggle-kit features --pool'")
    p.add_argument("--view-kind", choices=VIEW_KINDS, default=DEFAULT_VIEW_KIND)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_speed)
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except KitError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
