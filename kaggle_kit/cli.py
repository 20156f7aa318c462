"""The ``kaggle-kit`` command line: parse, call the stage, report. No math here.

Every user error ends with one line on stderr and a non-zero exit code (2 for bad input, 3 for a busy
experiment, 130 for Ctrl-C), never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from kaggle_kit.artifacts import KitError

# TensorFlow's C++ start-up chatter would bury the kit's own messages; users can still set their own level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

app = typer.Typer(
    help="Turn a folder of competition images into a validated Kaggle submission: "
    "features -> cv -> blend -> submit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ExpOption = typer.Option("default", "--exp", help="Experiment name: results go to experiments/<exp>/.")
DataOption = typer.Option(
    None, "--data", help="Competition folder (train/, test/). Default: the experiment's, else ./data.",
    file_okay=False,
)


class Tta(str, Enum):
    none = "none"
    flip = "flip"


def _err(message: str) -> None:
    typer.echo(message, err=True)


def handle_errors(fn):
    """Turn KitError and Ctrl-C into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KitError as exc:
            _err(f"error: {exc}")
            raise typer.Exit(code=exc.code) from None
        except KeyboardInterrupt:
            _err("interrupted: finished work is kept; run the same command again to resume")
            raise typer.Exit(code=130) from None

    return wrapper


def _resolve_data(exp_dir: Path, data: Optional[Path], positive: Optional[str]) -> tuple[Path, str]:
    from kaggle_kit.artifacts import load_experiment

    remembered = load_experiment(exp_dir)
    if data is None:
        data = Path(remembered["data_dir"]) if remembered else Path("data")
    if positive is None:
        positive = remembered["positive"] if remembered else "dog"
    return data, positive


@app.command()
@handle_errors
def features(
    backbone: str = typer.Option("xception", "--backbone", "-b", help="Backbone name; see 'kaggle-kit backbones'."),
    data: Optional[Path] = DataOption,
    exp: str = ExpOption,
    weights: str = typer.Option(
        "imagenet", "--weights", "-w",
        help="'imagenet' (Keras downloads and caches them), 'none' (random init: NOT pretrained), or a local file.",
    ),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=8, help="Override the backbone's input size."),
    tta: Tta = typer.Option(Tta.none, "--tta", help="'flip' also extracts horizontally flipped images."),
    positive: Optional[str] = typer.Option(None, "--positive", help="Class whose label is 1 (default: dog)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decoder threads (default: CPU count)."),
    shard_size: int = typer.Option(1024, "--shard-size", min=1, help="Images per resumable shard."),
    name: Optional[str] = typer.Option(None, "--name", help="Feature set name (default: backbone[_size][-layer])."),
    layer: Optional[list[str]] = typer.Option(
        None, "--layer", "-l",
        help="Pool this layer's output instead of the last layer's, as its own feature set; repeatable (one pass). "
        "'last' is the default features; 'kaggle-kit backbones --layers BACKBONE' lists the layers.",
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even if a matching cache exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Extract pooled features of a frozen ImageNet backbone for every train and test image (cached)."""
    from kaggle_kit.artifacts import check_name, experiment_dir, experiment_lock, features_dir, save_experiment
    from kaggle_kit.backbones import LAST, get_backbone, resolve_weights
    from kaggle_kit.data import discover
    from kaggle_kit.features import FeatureSettings, default_name, extract_feature_sets

    spec = get_backbone(backbone)
    layers = list(dict.fromkeys(None if n == LAST else n for n in layer or [LAST]))  # 'last' -> None, deduplicated
    if name and len(layers) > 1:
        raise KitError(f"--name names one feature set but {len(layers)} layers were asked for; drop --name", code=2)
    exp_dir = experiment_dir(exp)
    data_dir, positive = _resolve_data(exp_dir, data, positive)
    dataset = discover(data_dir, positive=positive)
    choice = resolve_weights(spec, weights)
    size = image_size or spec.input_size
    out_names = [check_name("feature set", name) if name else default_name(spec, size, one) for one in layers]
    jobs = [(features_dir(exp_dir, out_name),
             FeatureSettings(backbone=spec, weights=choice, image_size=size, tta=tta.value, batch_size=batch_size,
                             workers=workers, shard_size=shard_size, layer=one))
            for out_name, one in zip(out_names, layers)]
    with experiment_lock(exp_dir, command=f"features --backbone {backbone}"):
        # Warnings only once the lock is held: a run refused as busy says so in one line.
        for w in dataset.warnings:
            _err(f"warning: {w}")
        if choice.kind == "none":
            _err("WARNING: --weights none: random weights, these features are NOT pretrained and will score poorly "
                 "(use them for plumbing tests only)")
        save_experiment(exp_dir, data_dir=dataset.root, positive=positive)
        results = extract_feature_sets(dataset, jobs, force=force, warn=_err, progress=not quiet)
    for out_name, result in zip(out_names, results):
        m = result.manifest
        where = result.out_dir
        if result.cached:
            typer.echo(f"{out_name}: cached ({m['n_train']} train + {m['n_test']} test rows, {m['width']} features) "
                       f"in {where}; --force recomputes")
        else:
            rate = m["images_per_second"]
            typer.echo(f"{out_name}: {m['n_train']} train + {m['n_test']} test images -> {m['width']} features"
                       f"{' x2 (flip)' if m['tta'] == 'flip' else ''}, "
                       f"{rate if rate is not None else '-'} img/s end to end, {m['extract_seconds']} s -> {where}")


@app.command()
@handle_errors
def backbones(
    layers: Optional[str] = typer.Option(
        None, "--layers", metavar="BACKBONE", help="List the layers of BACKBONE worth cutting at (for --layer).",
    ),
    every: bool = typer.Option(False, "--all", help="With --layers: every layer with a feature map."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=8, help="With --layers: the input size."),
):
    """List the registered backbones with their input size, preprocessing and feature width."""
    from kaggle_kit.backbones import LAST, REGISTRY, cut_layers, get_backbone

    if layers is None:
        typer.echo(f"{'name':<22}{'size':>6}  {'preprocess':<10}{'width':>6}")
        for b in sorted(REGISTRY.values(), key=lambda b: b.name):
            typer.echo(f"{b.name:<22}{b.input_size:>6}  {b.preprocess:<10}{b.width:>6}")
        return
    spec = get_backbone(layers)
    size = image_size or spec.input_size
    cuts = cut_layers(spec, image_size=size, everything=every)
    typer.echo(f"{spec.name} at {size} px: {'every layer with a feature map' if every else 'layers worth cutting at'}"
               f" (kaggle-kit features --backbone {spec.name} --layer NAME)")
    column = max(len(c.name) for c in cuts) + 2
    typer.echo(f"{'layer':<{column}}{'map':>9}{'width':>7}")
    for c in cuts:
        note = "  the default features" if c.name == LAST else ""
        typer.echo(f"{c.name:<{column}}{f'{c.map_size[0]}x{c.map_size[1]}':>9}{c.width:>7}{note}")


class BlendMethod(str, Enum):
    selection = "selection"
    stack = "stack"
    mean = "mean"
    single = "single"


class Metric(str, Enum):
    logloss = "logloss"
    accuracy = "accuracy"


CompetitionOption = typer.Option(
    "dogs-vs-cats-redux-kernels-edition", "--competition",
    help="Competition slug: the part after /c/ in its address on kaggle.com.",
)


def _existing_experiment(exp: str) -> Path:
    from kaggle_kit.artifacts import experiment_dir

    exp_dir = experiment_dir(exp)
    if not exp_dir.is_dir():
        raise KitError(f"experiment {exp_dir} does not exist; run 'kaggle-kit features' and 'kaggle-kit cv' first")
    return exp_dir


@app.command()
@handle_errors
def blend(
    exp: str = ExpOption,
    method: Optional[BlendMethod] = typer.Option(
        None, "--method", help="Blending method (default: the one with the lowest cross-fitted OOF log loss).",
    ),
):
    """Blend the cv models' out-of-fold predictions, calibrate, choose a clip; print the cross-fitted ladder."""
    from kaggle_kit.artifacts import experiment_lock
    from kaggle_kit.blend import run_blend

    exp_dir = _existing_experiment(exp)
    with experiment_lock(exp_dir, command="blend"):
        out_dir, m = run_blend(exp_dir, method=method.value if method else None, warn=_err)
    scores = ", ".join(f"{k} {'-' if v is None else f'{v:.5f}'}" for k, v in m["method_scores"].items())
    typer.echo(f"{len(m['models'])} models, {m['n_scored']} of {m['n_train']} training rows, "
               f"{m['n_folds']} folds; cross-fitted OOF log loss by method: {scores} -> {m['method']}")
    typer.echo("weights: " + ", ".join(f"{k} {v:.4g}" for k, v in m["weights"].items() if v != 0))
    typer.echo("OOF log loss, cross-fitted:")
    for step in m["ladder"]:
        typer.echo(f"  {step['step']:<18} {step['oof_logloss']:.5f}  {step['detail']}")
    typer.echo(f"chosen clip {m['clip']['chosen']:.4g} (OOF log loss {m['clip']['oof_logloss']:.5f}), "
               "applied by 'kaggle-kit submit'")
    typer.echo(str(out_dir))


@app.command()
@handle_errors
def submit(
    exp: str = ExpOption,
    clip: str = typer.Option("auto", "--clip", help="'auto' (the blend's chosen clip) or c: labels clipped to c..1-c."),
    name: Optional[str] = typer.Option(None, "--name", help="File name in submissions/ (default: <exp>-<time>.csv)."),
    metric: Metric = typer.Option(Metric.logloss, "--metric", help="'accuracy' writes hard 0/1 labels (2013 contest)."),
    upload: bool = typer.Option(False, "--upload", help="Also submit the file to Kaggle (pip install kaggle)."),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Submission description (with --upload)."),
    competition: str = CompetitionOption,
):
    """Write a validated submission CSV from the blend (never overwriting one); print its path last."""
    from kaggle_kit.artifacts import experiment_lock
    from kaggle_kit.submit import make_submission

    exp_dir = _existing_experiment(exp)
    with experiment_lock(exp_dir, command="submit"):
        result = make_submission(exp_dir, exp=exp, clip=clip, name=name, metric=metric.value, upload=upload,
                                 message=message, competition=competition)
    lo, hi = result.label_range
    typer.echo(f"{result.n_rows} rows, labels in [{lo:g}, {hi:g}] ({result.metric}), read back and validated")
    if result.uploaded_to:
        typer.echo(f"uploaded to {result.uploaded_to}; "
                   f"scores: https://www.kaggle.com/c/{result.uploaded_to}/submissions")
    typer.echo(str(result.path))


@app.command()
@handle_errors
def download(
    competition: str = CompetitionOption,
    dest: Path = typer.Option(Path("data"), "--dest", file_okay=False, help="Folder to unpack into."),
):
    """Download a competition's files (official kaggle package); unpack train/, test/, sample_submission.csv."""
    from kaggle_kit.kaggle_api import download_competition

    out = download_competition(competition=competition, dest=dest, warn=_err)
    typer.echo(f"{competition}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    typer.echo(str(out))


@app.command()
@handle_errors
def demo(
    data: Optional[Path] = typer.Option(
        None, "--data", file_okay=False,
        help="Competition folder. Default: the public cats_and_dogs_filtered sample (downloaded once into "
        "--cache); offline, a synthetic SMOKE RUN.",
    ),
    exp: str = typer.Option("demo", "--exp", help="Experiment name (a smoke run uses <exp>-smoke)."),
    backbone: list[str] = typer.Option(
        ["efficientnet_lite0"], "--backbone", "-b", help="Backbone(s), repeatable; see 'kaggle-kit backbones'.",
    ),
    folds: int = typer.Option(5, "--folds", min=2, help="Folds of the cross-validation."),
    head: Optional[list[str]] = typer.Option(
        None, "--head", help="Head(s) for 'kaggle-kit cv', repeatable (default: cv's; 'logreg' alone is fastest).",
    ),
    cache: Path = typer.Option(
        Path("~/.cache/kaggle-kit"), "--cache", file_okay=False, help="Where the sample competition is kept.",
    ),
    positive: Optional[str] = typer.Option(None, "--positive", help="Class whose label is 1 (default: dog)."),
):
    """Run the whole pipeline (features --tta flip, cv, blend, submit) on a sample competition; print the
    ladder, the score against an answer key (test_labels.csv) if the folder has one, and the path last."""
    from kaggle_kit.demo import run_demo

    run_demo(data=data, exp=exp, backbones=backbone, folds=folds, heads=head or (), cache=cache,
             positive=positive, echo=typer.echo, progress=_err)


class Head(str, Enum):
    logreg = "logreg"
    mlp = "mlp"
    concat = "concat"
    concat_mlp = "concat_mlp"


@app.command()
@handle_errors
def cv(
    exp: str = ExpOption,
    folds: Optional[int] = typer.Option(
        None, "--folds", min=2, max=127,
        help="Folds of the experiment's plan (default: the current plan's, else 5). A new plan makes every "
        "cv result made on the old one stale.",
    ),
    repeats: Optional[int] = typer.Option(None, "--repeats", min=1, help="Repeats of the k-fold split (default 1)."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Seed of the split and the heads (default 0)."),
    backbone: Optional[list[str]] = typer.Option(
        None, "--backbone", "-b", help="Feature set(s), repeatable (default: every cached one).",
    ),
    head: Optional[list[Head]] = typer.Option(
        None, "--head",
        help="Head(s), repeatable: logreg, mlp (on each feature set), concat (logreg on all of them side by "
        "side), concat_mlp. Default: logreg and mlp, plus concat with two or more feature sets.",
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even if a matching cached result exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Fit k-fold heads on the cached features: out-of-fold and test predictions for every model (cached)."""
    from kaggle_kit.artifacts import experiment_dir, experiment_lock
    from kaggle_kit.cv import cached_feature_sets, run_cv

    exp_dir = experiment_dir(exp)
    cached_feature_sets(exp_dir)  # refuse before the lock creates anything
    data_dir, positive = _resolve_data(exp_dir, None, None)
    with experiment_lock(exp_dir, command="cv"):
        run = run_cv(exp_dir, data_dir=data_dir, positive=positive, n_folds=folds, repeats=repeats, seed=seed,
                     feature_sets=backbone or None, heads=[h.value for h in head] if head else None,
                     force=force, progress=not quiet)
    status = {"kept": "", "new": " (new)",
              "replaced": " (new: cv results made on the previous plan are stale)"}[run.plan_status]
    typer.echo(f"fold plan: {run.plan.describe()}{status}")
    column = max([32, *(len(r.model) + 2 for r in run.results)])  # layer feature sets have long names
    typer.echo(f"{'model':<{column}}{'OOF log loss':>13}{'accuracy':>10}{'seconds':>10}")
    for r in run.results:
        s = r.manifest["scores"]
        took = "cached" if r.cached else f"{r.manifest['seconds']:.1f}"
        typer.echo(f"{r.model:<{column}}{s['oof_logloss']:>13.5f}{s['oof_accuracy']:>10.2%}{took:>10}")
    if any(r.cached for r in run.results):
        typer.echo("cached: inputs unchanged since the last run; --force recomputes")
    if run.stale:
        _err(f"warning: made on another fold plan, so 'kaggle-kit blend' refuses them: {', '.join(run.stale)}; "
             "re-run 'kaggle-kit cv' to recompute them")
    typer.echo(str(exp_dir / "cv"))


@app.command()
@handle_errors
def report(
    exp: str = ExpOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Write experiments/<exp>/report.html (one self-contained page: models, ladder, calibration, clip curve,
    costliest mistakes, leaderboard estimate) and its plots as PNG in report/; print the page's path last."""
    from kaggle_kit.artifacts import experiment_lock
    from kaggle_kit.report import write_report

    exp_dir = _existing_experiment(exp)
    with experiment_lock(exp_dir, command="report"):
        result = write_report(exp_dir, progress=not quiet, warn=_err)
    for note in result.notes:
        _err(f"note: {note}")
    typer.echo(f"{result.n_models} models, {'blend' if result.has_blend else 'no blend'}; {result.estimate}")
    typer.echo(f"plots: {', '.join(str(p) for p in result.plots)}")
    typer.echo(str(result.path))


def main(argv: Optional[list[str]] = None) -> None:
    """The console entry point: runs ``app``, with usage errors (an unknown option, a bad value) in one line
    like every other error, instead of click's boxed or three-line usage message."""
    try:  # recent typer vendors click as typer._click; older ones use the click package
        from typer._click import exceptions as errors
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions as errors
    try:
        code = app(args=argv, prog_name="kaggle-kit", standalone_mode=False)
    except errors.NoArgsIsHelpError as exc:  # 'kaggle-kit' alone: the help, as usual
        typer.echo(exc.ctx.get_help())
        code = 0
    except errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "kaggle-kit"
        message = " ".join(exc.format_message().split())
        _err(f"error: {message} (see '{where} --help')")
        code = exc.exit_code
    except errors.ClickException as exc:
        _err(f"error: {' '.join(exc.format_message().split())}")
        code = exc.exit_code
    except typer.Abort:
        _err("interrupted: finished work is kept; run the same command again to resume")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
