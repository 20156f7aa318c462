"""Choose pseudo-labelling's defaults out of fold: OOF log loss of the logreg (and mlp) heads with and without
pseudo-labels, on a finished feature set, on the kit's default fold plan (5 folds, seed 0) and flip TTA.

    .venv/bin/python bench/pseudo_defaults.py FEATURES_DIR --out results.json [--mlp | --mlp-only]
    .venv/bin/python bench/pseudo_defaults.py FEATURES_DIR --out results.json --score-test ANSWERS.csv

The first form runs the grid (hard/soft labels, thresholds, weights) and writes every configuration's OOF log
loss, cv seconds and test predictions. The second, run once at the end, only reads those results and scores
the plain head and the chosen default against the answer key (never used to choose).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from extraction import answer_labels, test_score_text  # bench/, this script's folder

from kaggle_kit.folds import make_plan
from kaggle_kit.heads import MlpSettings, fit_logreg, fit_mlp
from kaggle_kit.metrics import log_loss
from kaggle_kit.pseudo import LogregPseudoSettings, MlpPseudoSettings, PseudoSettings, fit_logreg_pl, fit_mlp_pl

GRID = [PseudoSettings(labels="hard", threshold=t, weight=w) for t in (0.8, 0.9, 0.95, 0.99) for w in (0.3, 1.0)]
GRID += [PseudoSettings(labels="soft", threshold=t, weight=w) for t in (0.5, 0.9) for w in (0.3, 1.0)]
MLP_GRID = [PseudoSettings(labels="hard", threshold=t, weight=w) for t, w in ((0.9, 0.3), (0.95, 0.3), (0.95, 1.0),
                                                                            (0.99, 1.0))]


def name(p: PseudoSettings | None) -> str:
    return "plain" if p is None else f"{p.labels} t={p.threshold} w={p.weight}"


def run_grid(features: Path, *, logreg: bool, mlp: bool) -> dict:
    from kaggle_kit.store import load_features

    fs = load_features(features)
    views = [np.asarray(fs.arrays["train"]), np.asarray(fs.arrays["train_flip"])]
    test_views = [np.asarray(fs.arrays["test"]), np.asarray(fs.arrays["test_flip"])]
    y = np.asarray(fs.y).astype(np.int8)
    fold = make_plan(y, n_folds=5, repeats=1, seed=0)[0]
    common = dict(tta_train=True, tta_predict=True, seed=0)
    rows = []

    def record(head: str, p: PseudoSettings | None, fit) -> None:
        t0 = time.perf_counter()
        out = fit()
        rows.append({"head": head, "config": name(p), "oof_logloss": round(log_loss(y, out.oof), 5),
                     "oof_accuracy": round(float(np.mean((out.oof > 0.5) == y)), 4),
                     "seconds": round(time.perf_counter() - t0, 1),
                     "pseudo_rows": out.params.get("pseudo_rows"), "test": out.test.tolist()})
        print(f"{head:<7}{name(p):<22}{rows[-1]['oof_logloss']:>9.5f}{rows[-1]['oof_accuracy']:>8.2%}"
              f"{rows[-1]['seconds']:>7.1f} s  pseudo rows per fold {rows[-1]['pseudo_rows']}", flush=True)

    if logreg:
        record("logreg", None, lambda: fit_logreg(views, y, fold, test_views, **common))
        for p in GRID:
            record("logreg", p, lambda: fit_logreg_pl(views, y, fold, test_views,
                                                      settings=LogregPseudoSettings(pseudo=p), **common))
    if mlp:
        record("mlp", None, lambda: fit_mlp(views, y, fold, test_views, settings=MlpSettings(), **common))
        for p in MLP_GRID:
            record("mlp", p, lambda: fit_mlp_pl(views, y, fold, test_views,
                                                settings=MlpPseudoSettings(pseudo=p), **common))
    return {"features": str(features), "n_train": len(y), "n_test": len(test_views[0]),
            "test_ids": list(fs.test_ids), "rows": rows}


def score_test(results: dict, answers: Path) -> None:
    """Print the test log loss of the plain heads and of the default pseudo-labelling (run once, at the end)."""
    t = answer_labels(answers, results["test_ids"])
    default = name(PseudoSettings())
    for r in results["rows"]:
        if r["config"] in ("plain", default):
            print(f"{r['head']:<7}{r['config']:<22} OOF {r['oof_logloss']:.5f}  {test_score_text(t, r['test'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("features", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mlp", action="store_true", help="also the mlp head (slower)")
    ap.add_argument("--mlp-only", action="store_true", help="only the mlp head")
    ap.add_argument("--score-test", type=Path, metavar="ANSWERS_CSV")
    args = ap.parse_args()
    if args.score_test:
        score_test(json.loads(args.out.read_text()), args.score_test)
        return
    results = run_grid(args.features, logreg=not args.mlp_only, mlp=args.mlp or args.mlp_only)
    args.out.write_text(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
