"""Time ``kaggle-kit cv``'s logistic-regression heads on Kaggle-sized synthetic features.

Dogs vs. Cats Redux has 25,000 training and 12,500 test images; the classic recipe pools three backbones into
2,048 features each. This script makes three such feature sets (float32, with some signal: class-dependent
means in a low-rank subspace, a ReLU, plus noise), a 5-fold plan, and times the logreg head on each and on
their concatenation (concat__logreg, 6,144 features), as ``kaggle-kit cv`` runs them. Goal: under 2 minutes
in all on a 2-core machine.

``--sklearn ROWS`` adds the reason the kit solves its logistic regressions itself: scikit-learn's
``LogisticRegressionCV`` (same folds, same inner folds, same C grid, n_jobs=2) timed beside the kit's logreg
head on the first feature set, cut to its first ROWS training rows (scikit-learn takes far longer than the
kit at full size). ``make bench`` runs the same comparison (bench/run.py, Kaggle-size section).

    .venv/bin/python bench/bench_cv.py [--train 25000] [--test 12500] [--width 2048] [--folds 5] [--sklearn ROWS]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from kaggle_kit.cv import cross_validate
from kaggle_kit.folds import make_plan
from kaggle_kit.heads import DEFAULT_CS, LogregSettings
from kaggle_kit.metrics import log_loss


def synthetic_backbone(y: np.ndarray, n_test: int, *, width: int, rank: int, signal: float,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train (len(y), width) and test (n_test, width) float32 features of one make-believe backbone.

    A latent (rows, rank) Gaussian whose mean moves with the class (test rows get random classes), mapped
    to ``width`` features by a random matrix, plus unit noise, through a ReLU, as pooled CNN features are.
    """
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((rank, width)).astype(np.float32) / np.sqrt(rank)
    shift = (signal * rng.standard_normal(rank) / np.sqrt(rank)).astype(np.float32)

    def features(labels: np.ndarray) -> np.ndarray:
        latent = rng.standard_normal((len(labels), rank), dtype=np.float32) + np.outer(2 * labels - 1, shift)
        out = latent @ mixing
        out += rng.standard_normal(out.shape, dtype=np.float32)
        return np.maximum(out, 0, out=out)

    return features(y), features(rng.integers(0, 2, n_test))


def sklearn_logreg_cv(X: np.ndarray, y: np.ndarray, fold: np.ndarray, X_test: np.ndarray, *, seed: int,
                      n_jobs: int = 2, max_iter: int = 1000) -> dict:
    """The kit's logreg head done with scikit-learn: per outer fold of ``fold`` (n,), ``StandardScaler`` +
    ``LogisticRegressionCV`` over :data:`~kaggle_kit.heads.DEFAULT_CS` with the head's inner folds
    (``StratifiedKFold(3, shuffle=True, random_state=seed + f)`` on fold f's training rows) and log-loss
    scoring, refitted at the best C. X (n, d), X_test (m, d) float32. Returns its OOF log loss, the C per
    fold, the convergence warnings and the seconds."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    inner = LogregSettings().inner_folds
    oof = np.full(len(y), np.nan)
    test = np.zeros(len(X_test))
    chosen, n_warnings = [], 0
    t0 = time.perf_counter()
    k = int(fold.max()) + 1
    for f in range(k):
        train = fold != f
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(
            Cs=list(DEFAULT_CS), cv=StratifiedKFold(inner, shuffle=True, random_state=seed + f),
            scoring="neg_log_loss", n_jobs=n_jobs, max_iter=max_iter))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(X[train], y[train])
        n_warnings += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        oof[~train] = model.predict_proba(X[~train])[:, 1]
        test += model.predict_proba(X_test)[:, 1] / k
        chosen.append(float(model[-1].C_[0]))
    return {"seconds": round(time.perf_counter() - t0, 1), "oof_logloss": round(log_loss(y, oof), 5),
            "C": chosen, "convergence_warnings": n_warnings, "settings": f"lbfgs, tol 1e-4, max_iter {max_iter}, "
            f"{len(DEFAULT_CS)} Cs, {inner} inner folds, n_jobs {n_jobs}"}


def compare_with_sklearn(X: np.ndarray, y: np.ndarray, plan: np.ndarray, X_test: np.ndarray, *, seed: int) -> dict:
    """The kit's logreg head and scikit-learn's LogisticRegressionCV on the same rows X (n, d), labels y (n,),
    folds ``plan`` (1, n) and test rows X_test (m, d): seconds, OOF log loss and C per fold of each."""
    wall = time.perf_counter()
    kit = cross_validate([X], y, plan, [X_test], head="logreg", seed=seed)
    kit_row = {"seconds": round(time.perf_counter() - wall, 1), "oof_logloss": kit.scores["oof_logloss"],
               "C": kit.params["per_repeat"][0]["C"]}
    skl = sklearn_logreg_cv(X, y, plan[0], X_test, seed=seed)
    return {"rows": len(y), "test_rows": len(X_test), "width": X.shape[1], "folds": int(plan.max()) + 1,
            "kit": kit_row, "sklearn": skl, "sklearn_over_kit": round(skl["seconds"] / max(kit_row["seconds"], 0.1), 1)}


def print_comparison(c: dict) -> None:
    print(f"logreg head, kit vs scikit-learn LogisticRegressionCV: {c['rows']:,} train + {c['test_rows']:,} test "
          f"rows x {c['width']} features, {c['folds']} folds, same inner folds and C grid")
    print(f"{'':<24}{'seconds':>9}{'OOF log loss':>14}  C per fold")
    for name, r in (("kit (batched L-BFGS)", c["kit"]), ("sklearn (n_jobs=2)", c["sklearn"])):
        print(f"{name:<24}{r['seconds']:>9.1f}{r['oof_logloss']:>14.5f}  {' '.join(f'{x:g}' for x in r['C'])}")
    print(f"sklearn / kit: {c['sklearn_over_kit']}x ({c['sklearn']['convergence_warnings']} convergence warnings; "
          f"{c['sklearn']['settings']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=25_000)
    parser.add_argument("--test", type=int, default=12_500)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sklearn", type=int, default=0, metavar="ROWS",
                        help="also time scikit-learn's LogisticRegressionCV on the first feature set's first ROWS rows")
    args = parser.parse_args()

    y = (np.random.default_rng(args.seed).random(args.train) < 0.5).astype(np.int8)
    t0 = time.perf_counter()
    sets = {name: synthetic_backbone(y, args.test, width=args.width, rank=32, signal=s, seed=args.seed + i)
            for i, (name, s) in enumerate([("backbone_a", 1.6), ("backbone_b", 1.3), ("backbone_c", 1.0)])}
    plan = make_plan(y, n_folds=args.folds, repeats=1, seed=args.seed)
    print(f"{args.train:,} train + {args.test:,} test rows, 3 x {args.width} features, {args.folds} folds "
          f"({os.cpu_count()} CPUs); data made in {time.perf_counter() - t0:.1f} s")

    models = [(f"{name}__logreg", [name]) for name in sets] + [("concat__logreg", list(sets))]
    total = 0.0
    print(f"{'model':<22}{'seconds':>9}{'CPU s':>8}{'OOF log loss':>14}  C per fold")
    for model, members in models:
        wall, cpu = time.perf_counter(), time.process_time()
        train = [np.concatenate([sets[m][0] for m in members], axis=1) if len(members) > 1 else sets[members[0]][0]]
        test = [np.concatenate([sets[m][1] for m in members], axis=1) if len(members) > 1 else sets[members[0]][1]]
        out = cross_validate(train, y, plan, test, head="logreg", seed=args.seed)
        seconds = time.perf_counter() - wall
        total += seconds
        Cs = " ".join(f"{c:g}" for c in out.params["per_repeat"][0]["C"])
        print(f"{model:<22}{seconds:>9.1f}{time.process_time() - cpu:>8.1f}{out.scores['oof_logloss']:>14.5f}  {Cs}")
    print(f"{'total':<22}{total:>9.1f}   (goal: under 120 s)")
    if args.sklearn:
        rows = min(args.sklearn, args.train)
        X, X_test = sets["backbone_a"]
        sub_plan = make_plan(y[:rows], n_folds=args.folds, repeats=1, seed=args.seed)
        print()
        print_comparison(compare_with_sklearn(X[:rows], y[:rows], sub_plan, X_test, seed=args.seed))


if __name__ == "__main__":
    main()
