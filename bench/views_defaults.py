"""Choose the augmented views' defaults out of fold: OOF log loss of a logreg head (and its pseudo-labelling twin)
trained on and averaged over the first k views of a feature set made with ``features --tta flip --views N``, for
k = 0 (the flip alone) .. N, on the kit's default fold plan (5 folds, seed 0), with each one's cv seconds.

    .venv/bin/python bench/views_defaults.py FEATURES_DIR --out results.json [--groups REGEX] [--pseudo]
    .venv/bin/python bench/views_defaults.py FEATURES_DIR --out results.json --score-test ANSWERS.csv

``--groups REGEX``: also score every configuration on a group-wise plan (StratifiedGroupKFold, 5 folds, seed
0), the group of a training row being the first match of REGEX in its file name (malaria-mini: the patient,
``^(.*?)[Tt]hin``), for data whose test rows come from other groups than the training rows. The second form,
run once at the end, only reads the stored results and scores their test predictions against the answer key
(never used to choose).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
from extraction import answer_labels, test_score_text  # bench/, this script's folder

from kaggle_kit.folds import make_plan
from kaggle_kit.heads import fit_logreg
from kaggle_kit.metrics import log_loss
from kaggle_kit.pseudo import LogregPseudoSettings, fit_logreg_pl
from kaggle_kit.views import array_name


def group_plan(y: np.ndarray, files: list[str], pattern: str) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    groups = []
    for f in files:
        match = re.search(pattern, Path(f).name)
        if match is None:
            raise SystemExit(f"--groups {pattern!r} does not match {f}")
        groups.append(match.group(1) if match.groups() else match.group(0))
    fold = np.empty(len(y), np.int8)
    for f, (_, held_out) in enumerate(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(y, y, groups)):
        fold[held_out] = f
    return fold


def run(features: Path, *, groups: str | None, pseudo: bool) -> dict:
    from kaggle_kit.data import discover_remembered
    from kaggle_kit.store import experiment_data, load_features

    fs = load_features(features)
    y = np.asarray(fs.y).astype(np.int8)
    plans = {"by row": make_plan(y, n_folds=5, repeats=1, seed=0)[0]}
    if groups:
        dataset = discover_remembered(experiment_data(features.parent.parent))
        plans["by group"] = group_plan(y, list(dataset.train_files), groups)
    suffixes = fs.view_suffixes
    per_view = 2 if fs.tta == "flip" else 1
    configs = {"none": [""]}
    if fs.tta == "flip":
        configs["flip"] = ["", "flip"]
    for k, view in enumerate(fs.views, start=1):
        configs[f"flip + {', '.join(fs.views[:k])}" if fs.tta == "flip" else ", ".join(fs.views[:k])] = \
            suffixes[:per_view * (k + 1)]
    rows = []
    for config, chosen in configs.items():
        views = [np.asarray(fs.arrays[array_name("train", s)]) for s in chosen]
        test_views = [np.asarray(fs.arrays[array_name("test", s)]) for s in chosen]
        tta = len(views) > 1
        heads = {"logreg": lambda f: fit_logreg(views, y, f, test_views, tta_train=tta, tta_predict=tta, seed=0)}
        if pseudo:
            heads["logreg_pl"] = lambda f: fit_logreg_pl(views, y, f, test_views, settings=LogregPseudoSettings(),
                                                         tta_train=tta, tta_predict=tta, seed=0)
        for head, fit in heads.items():
            for plan_name, fold in plans.items():
                t0 = time.perf_counter()
                out = fit(fold)
                rows.append({"config": config, "views": len(chosen), "head": head, "plan": plan_name,
                             "oof_logloss": round(log_loss(y, out.oof), 5),
                             "oof_accuracy": round(float(np.mean((out.oof > 0.5) == y)), 4),
                             "seconds": round(time.perf_counter() - t0, 1), "test": out.test.tolist()})
                r = rows[-1]
                print(f"{config:<40}{head:<10}{plan_name:<9}{r['oof_logloss']:>9.5f}{r['oof_accuracy']:>8.2%}"
                      f"{r['seconds']:>7.1f} s", flush=True)
    return {"features": str(features), "images_per_second": fs.images_per_second, "n_views": len(suffixes),
            "test_ids": list(fs.test_ids), "rows": rows}


def score_test(results: dict, answers: Path) -> None:
    """Every configuration's test log loss on the by-row plan (run once, at the end; never used to choose)."""
    t = answer_labels(answers, results["test_ids"])
    for r in results["rows"]:
        if r["plan"] == "by row":
            print(f"{r['config']:<40}{r['head']:<10} OOF {r['oof_logloss']:.5f}  {test_score_text(t, r['test'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("features", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--groups", metavar="REGEX", help="also score on a group-wise plan (see the module docstring)")
    ap.add_argument("--pseudo", action="store_true", help="also the logreg head with pseudo-labels (cv --pseudo)")
    ap.add_argument("--score-test", type=Path, metavar="ANSWERS_CSV")
    args = ap.parse_args()
    if args.score_test:
        score_test(json.loads(args.out.read_text()), args.score_test)
        return
    results = run(args.features, groups=args.groups, pseudo=args.pseudo)
    args.out.write_text(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
