"""Time ``kaggle-kit cv``'s logistic-regression heads on Kaggle-sized synthetic features.

Dogs vs. Cats Redux has 25,000 training and 12,500 test images; the classic recipe pools three backbones into
2,048 features each. This script makes three such feature sets (float32, with some signal: class-dependent
means in a low-rank subspace, a ReLU, plus noise), a 5-fold plan, and times the logreg head on each and on
their concatenation (concat__logreg, 6,144 features), as ``kaggle-kit cv`` runs them. Goal: under 2 minutes
in all on a 2-core machine.

    .venv/bin/python bench/bench_cv.py [--train 25000] [--test 12500] [--width 2048] [--folds 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from kaggle_kit.cv import cross_validate
from kaggle_kit.folds import make_plan


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=25_000)
    parser.add_argument("--test", type=int, default=12_500)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
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


if __name__ == "__main__":
    main()
