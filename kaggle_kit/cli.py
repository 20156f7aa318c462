"""The ``kaggle-kit`` command line: parse, call the stage, print. No logic here.

Each command calls one stage function (``run_features``, ``run_cv``, ``run_blend``, ``make_submission``,
``write_report``, ``run_demo``), which takes the experiment folder and keyword settings, holds the
experiment's lock itself and returns a result that knows its own lines of output (``status`` only reads:
``experiment_status``). The choices of an option (``--tta``, ``--decoder``, ``--engine``, ``--head``,
``--method``, ``--metric``, ``--layout``) are the tuples defined by the module that uses them.

Every user error ends with one line on stderr and a non-zero exit code (2 for bad input, 3 for a busy
experiment, 130 for Ctrl-C), never a traceback. Commands are listed in ``--help`` in the order a user runs them.
"""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Iterable, Optional

import typer

from kaggle_kit.artifacts import KitError
from kaggle_kit.backbones import DEFAULT_POOL, POOLS
from kaggle_kit.blend import METHODS
from kaggle_kit.cv import HEAD_CHOICES
from kaggle_kit.data import LAYOUTS
from kaggle_kit.decoders import DECODERS
from kaggle_kit.features import DEFAULT_BACKBONE, ENGINES, TTA_MODES
from kaggle_kit.kaggle_api import DEFAULT_COMPETITION
from kaggle_kit.metrics import METRICS
from kaggle_kit.store import experiment_dir
from kaggle_kit.views import DEFAULT_VIEW_KIND, VIEW_KINDS

app = typer.Typer(
    help="Turn a folder of competition images into a validated Kaggle submission: "
    "features -> cv -> blend -> submit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A str Enum for Typer, from the tuple of choices its module defines."""
    return Enum(name, {v: v for v in values}, type=str)


Tta = _choices("Tta", TTA_MODES)
Decoder = _choices("Decoder", DECODERS)
Engine = _choices("Engine", ENGINES)
Head = _choices("Head", HEAD_CHOICES)
BlendMethod = _choices("BlendMethod", METHODS)
Metric = _choices("Metric", METRICS)
Layout = _choices("Layout", LAYOUTS)
ViewKind = _choices("ViewKind", VIEW_KINDS)
Pool = _choices("Pool", POOLS)

ExpOption = typer.Option("default", "--exp", help="Experiment name: results go to experiments/<exp>/.")
DataOption = typer.Option(
    None, "--data", help="Competition folder (train/, test/). Default: the experiment's, else ./data.",
    file_okay=False,
)
CompetitionOption = typer.Option(
    DEFAULT_COMPETITION, "--competition", help="Competition slug: the part after /c/ in its address on kaggle.com.",
)
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bar.")
MetricOption = typer.Option(
    None, "--metric", help="The competition's metric: logloss, auc or accuracy (default: the experiment's, else "
    "logloss). Remembered by the experiment.",
)


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _echo(lines: Iterable[str]) -> None:
    for line in lines:
        typer.echo(line)


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


@app.command()
@handle_errors
def features(
    backbone: str = typer.Option(
        DEFAULT_BACKBONE, "--backbone", "-b", help="Backbone name; see 'kaggle-kit backbones'.",
    ),
    data: Optional[Path] = DataOption,
    exp: str = ExpOption,
    weights: str = typer.Option(
        "imagenet", "--weights", "-w",
        help="'imagenet' (a copy in $KAGGLE_KIT_WEIGHTS or Keras's cache, else Keras downloads it), a folder "
             "holding the published file, a local file, or 'none' (random init: NOT pretrained).",
    ),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=8, help="Override the backbone's input size."),
    tta: Tta = typer.Option(Tta("none"), "--tta", help="'flip' also extracts horizontally flipped images."),
    views: int = typer.Option(
        0, "--views", min=0,
        help="Extra views of each image (each flipped too with --tta flip); cv trains on and averages over all.",
    ),
    view_kind: ViewKind = typer.Option(
        ViewKind(DEFAULT_VIEW_KIND), "--view-kind",
        help="'crops': zooms and corner crops of a larger resize (photos, up to 6). 'rotations': quarter turns "
        "(cells, tiles: images without an up, up to 3).",
    ),
    positive: Optional[str] = typer.Option(
        None, "--positive", help="Class whose label is 1 (default: dog; 1 for a 0/1 target)."),
    layout: Optional[Layout] = typer.Option(
        None, "--layout", help="How the data folder is laid out (default: detected; see 'Competitions it reads')."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", dir_okay=False,
        help="Labels CSV of the csv layout (default: train.csv or train_labels.csv)."),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="Id column of the labels CSV (default: inferred)."),
    target_col: Optional[str] = typer.Option(
        None, "--target-col", help="Binary target column of the labels CSV (default: inferred)."),
    metric: Optional[Metric] = MetricOption,
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1,
        help="Local engine: decoder threads (default: CPU count). Ray engine: workers, one model each "
        "(default: as many as the cluster's CPUs, or GPUs, allow).",
    ),
    decoder: Decoder = typer.Option(
        Decoder("opencv"), "--decoder",
        help="'opencv': CPU threads. 'dali': JPEG decoding and resizing on an NVIDIA GPU "
        "(pip install 'kaggle-kit\\[dali]').",
    ),
    shard_size: int = typer.Option(1024, "--shard-size", min=1, help="Images per resumable shard."),
    engine: Engine = typer.Option(
        Engine("local"), "--engine",
        help="'local': this process. 'ray': workers on a Ray cluster (pip install 'kaggle-kit\\[ray]').",
    ),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray engine: the head node, HOST:PORT or 'auto' (default: $RAY_ADDRESS, else "
        "Ray started on this machine for the run).",
    ),
    cpus_per_worker: Optional[float] = typer.Option(
        None, "--cpus-per-worker", help="Ray engine: CPUs (decoder threads) per worker (default 1).",
    ),
    gpus_per_worker: Optional[float] = typer.Option(
        None, "--gpus-per-worker", help="Ray engine: GPUs per worker (default 0; fractions share a GPU).",
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="Feature set name (default: backbone[_size][-layer][.pool])."),
    layer: Optional[list[str]] = typer.Option(
        None, "--layer", "-l",
        help="Pool this layer's output instead of the last layer's, as its own feature set; repeatable (one pass). "
        "'last' is the default features; 'kaggle-kit backbones --layers BACKBONE' lists the layers.",
    ),
    pool: Pool = typer.Option(
        Pool(DEFAULT_POOL), "--pool",
        help="How each layer's feature map becomes features: 'avg' (its mean), 'max', or 'avgmax' (both, twice the "
        "width; keeps small local details, e.g. a parasite in a cell, that the mean dilutes).",
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even if a matching cache exists."),
    quiet: bool = QuietOption,
):
    """Extract pooled features of a frozen ImageNet backbone for every train and test image (cached)."""
    from kaggle_kit.features import run_feature_sets

    results = run_feature_sets(experiment_dir(exp), backbone=backbone, data=data, weights=weights,
                               image_size=image_size, tta=tta.value, views=views, view_kind=view_kind.value,
                               pool=pool.value, positive=positive,
                               layout=layout.value if layout else None, labels=labels, id_col=id_col,
                               target_col=target_col, metric=metric.value if metric else None,
                               batch_size=batch_size, workers=workers, decoder=decoder.value, shard_size=shard_size,
                               engine=engine.value, address=address, cpus_per_worker=cpus_per_worker,
                               gpus_per_worker=gpus_per_worker, name=name, layers=layer, force=force, warn=_err,
                               progress=not quiet)
    for result in results:
        _echo(result.lines())


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
    groups: Optional[str] = typer.Option(
        None, "--groups",
        help="Group-wise folds: a regex whose first group, searched in each training file's name, names its "
        "group (patient, slide...); a group's images share a fold. 'none': folds by image again. Default: the "
        "current plan's.",
    ),
    backbone: Optional[list[str]] = typer.Option(
        None, "--backbone", "-b", help="Feature set(s), repeatable (default: every cached one).",
    ),
    head: Optional[list[Head]] = typer.Option(
        None, "--head",
        help="Head(s), repeatable: logreg, mlp (on each feature set), concat (logreg on all of them side by "
        "side), concat_mlp. Default: logreg and mlp, plus concat with two or more feature sets.",
    ),
    pseudo: bool = typer.Option(
        False, "--pseudo",
        help="Also fit each model with pseudo-labels: per fold, refit on the test images its model is sure of "
        "(models named <model>_pl, e.g. efficientnet_lite0__logreg_pl).",
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even if a matching cached result exists."),
    quiet: bool = QuietOption,
):
    """Fit k-fold heads on the cached features: out-of-fold and test predictions for every model (cached)."""
    from kaggle_kit.cv import run_cv

    run = run_cv(experiment_dir(exp), n_folds=folds, repeats=repeats, seed=seed, groups=groups,
                 feature_sets=backbone or None,
                 heads=[h.value for h in head] if head else None, pseudo=pseudo, force=force,
                 progress=not quiet)
    _echo(run.lines())
    for warning in run.warnings():
        _err(warning)


@app.command()
@handle_errors
def blend(
    exp: str = ExpOption,
    method: Optional[BlendMethod] = typer.Option(
        None, "--method", help="Blending method (default: the one with the best cross-fitted OOF score); 'rank' "
        "(rank averaging) is for --metric auc.",
    ),
    metric: Optional[Metric] = MetricOption,
):
    """Blend the cv models' out-of-fold predictions, calibrate, choose a clip; print the cross-fitted ladder."""
    from kaggle_kit.blend import run_blend

    _echo(run_blend(experiment_dir(exp), method=method.value if method else None,
                    metric=metric.value if metric else None, warn=_err).lines())


@app.command()
@handle_errors
def submit(
    exp: str = ExpOption,
    clip: str = typer.Option("auto", "--clip", help="'auto' (the blend's chosen clip) or c: labels clipped to c..1-c."),
    name: Optional[str] = typer.Option(None, "--name", help="File name in submissions/ (default: <exp>-<time>.csv)."),
    metric: Optional[Metric] = typer.Option(
        None, "--metric", help="Default: the blend's. 'accuracy' writes hard 0/1 labels (the 2013 contest); 'auc' "
        "the blend's scores unclipped.",
    ),
    upload: bool = typer.Option(False, "--upload", help="Also submit the file to Kaggle (pip install kaggle)."),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Submission description (with --upload)."),
    competition: str = CompetitionOption,
):
    """Write a validated submission CSV from the blend (never overwriting one); print its path last."""
    from kaggle_kit.submit import make_submission

    result = make_submission(experiment_dir(exp), clip=clip, name=name, metric=metric.value if metric else None,
                             upload=upload, message=message, competition=competition)
    for warning in result.warnings():
        _err(warning)
    _echo(result.lines())


@app.command()
@handle_errors
def report(
    exp: str = ExpOption,
    quiet: bool = QuietOption,
    cam: bool = typer.Option(True, "--cam/--no-cam",
                             help="Heatmaps beside the costliest mistakes (rebuilds a backbone)."),
):
    """Write experiments/<exp>/report.html (one self-contained page: models, ladder, calibration, clip curve,
    costliest mistakes, leaderboard estimate), its plots as PNG in report/ and every OOF mistake in
    report/mistakes.csv (to audit the training labels); print the page's path last."""
    from kaggle_kit.report import write_report

    result = write_report(experiment_dir(exp), progress=not quiet, warn=_err, cam=cam)
    for note in result.notes + ((result.cam_note,) if result.cam_note else ()):
        _err(f"note: {note}")
    _echo(result.lines())


@app.command()
@handle_errors
def status(
    exp: str = ExpOption,
    as_json: bool = typer.Option(False, "--json", help="Print the same content as one JSON document."),
):
    """Show the experiment: data, feature sets, fold plan, cv models, blend, latest submission, what is stale,
    and the one command to run next. Reads only: no lock, nothing written."""
    from kaggle_kit.status import experiment_status, render_json, render_text

    result = experiment_status(experiment_dir(exp))
    _echo(render_json(result) if as_json else render_text(result))


@app.command()
@handle_errors
def demo(
    data: Optional[Path] = typer.Option(
        None, "--data", file_okay=False,
        help="Competition folder. Default: the public cats_and_dogs_filtered sample (downloaded once into "
        "--cache); offline, a synthetic SMOKE RUN.",
    ),
    exp: Optional[str] = typer.Option(
        None, "--exp", help="Experiment name (default: demo, or demo-recipe with --recipe; a smoke run adds -smoke).",
    ),
    recipe: bool = typer.Option(
        False, "--recipe",
        help="Run the kit's recommended recipe for a new competition instead of one backbone: seven feature sets "
        "(EfficientNet-Lite0 320 px and Lite2 224 px last layers, Lite0 128 px block5x; SqueezeNet 128 px "
        "fire5_concat and fire6_concat and 160 px fire6_concat with --pool avgmax, and 192 px last layer), a logreg "
        "head on each and a concat head on the four SqueezeNet sets. SqueezeNet's weights file must be in "
        "$KAGGLE_KIT_WEIGHTS or --weights-dir.",
    ),
    backbone: Optional[list[str]] = typer.Option(
        None, "--backbone", "-b",
        help="Backbone(s), repeatable (default: efficientnet_lite0); see 'kaggle-kit backbones'. Not with --recipe.",
    ),
    folds: int = typer.Option(5, "--folds", min=2, help="Folds of the cross-validation."),
    head: Optional[list[Head]] = typer.Option(
        None, "--head",
        help="Head(s) for 'kaggle-kit cv', repeatable (default: cv's; 'logreg' alone is fastest). Not with --recipe.",
    ),
    views: int = typer.Option(
        0, "--views", min=0,
        help="Extra views of each image for every features stage (default 0: the flip only). Images without an "
        "up (cells, tiles): --views 3 --view-kind rotations.",
    ),
    view_kind: ViewKind = typer.Option(
        ViewKind(DEFAULT_VIEW_KIND), "--view-kind", help="'crops' (photos) or 'rotations'; see 'features --help'.",
    ),
    groups: Optional[str] = typer.Option(
        None, "--groups",
        help="Group-wise folds: a regex whose first group, searched in each training file's name, names its group "
        "(patient, slide...); see 'cv --help'.",
    ),
    weights_dir: Optional[Path] = typer.Option(
        None, "--weights-dir", exists=True, file_okay=False,
        help="A folder holding SqueezeNet's published weights file, passed as --weights to the SqueezeNet stages "
        "only (default: it is looked for in $KAGGLE_KIT_WEIGHTS and Keras's cache).",
    ),
    cache: Path = typer.Option(
        Path("~/.cache/kaggle-kit"), "--cache", file_okay=False, help="Where the sample competition is kept.",
    ),
    positive: Optional[str] = typer.Option(None, "--positive", help="Class whose label is 1 (default: dog)."),
):
    """Run the whole pipeline (features --tta flip, cv, blend, submit) on a sample competition, or with --recipe
    the kit's recommended recipe; print each stage's command, the ladder, the score against an answer key
    (test_labels.csv) if any, and the path last."""
    from kaggle_kit.demo import run_demo

    run_demo(data=data, exp=exp, backbones=backbone or None, recipe=recipe, folds=folds,
             heads=[h.value for h in head or ()], cache=cache, positive=positive, views=views,
             view_kind=view_kind.value, groups=groups, weights_dir=weights_dir, echo=typer.echo, progress=_err)


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
