"""The experiment report: one self-contained HTML page of an experiment's models, blend, calibration and mistakes.

Core (pure numpy, every setting a keyword argument): ``y`` is always (n,) 0/1 labels and ``p`` (n,)
probabilities of the positive class (NaN on rows without a prediction, which every function leaves out).

- :func:`estimate_rank`, :func:`medal_zone`, :func:`leaderboard_sentence`: where a log loss would have placed
  on the final private leaderboard of Dogs vs. Cats Redux, interpolated between the published rank figures;
- :func:`reliability_bins`: the reliability diagram's points (``sklearn.calibration.calibration_curve``) and
  the number of predictions in each bin;
- :func:`clip_curve`: log loss of clip(p, c, 1 - c) over log-spaced clip levels c;
- :func:`top_mistakes`: the rows whose predictions cost the most log loss; :func:`loss_share`: the part of the
  log loss that some rows carry;
- :func:`plot_roc`: ROC curves (for AUC competitions).

Edge: :func:`write_report` (``kaggle-kit report``) reads ``experiments/<exp>/`` through the loaders of
:mod:`kaggle_kit.store` (the blend's OOF predictions before and after calibration included) and writes
``experiments/<exp>/report.html`` (images embedded as base64 data URIs, inline CSS, no script, no
external resource), the same plots as PNG files in ``experiments/<exp>/report/`` and every OOF mistake in
``report/mistakes.csv`` (a list to audit the training labels with). An experiment without a
blend still gets a report: it says what is missing and shows what it can, from the best single model. The
page is about the competition's metric (the blend's, else the experiment's): it orders the model table, scores
the ladder and picks the plots; the Redux leaderboard estimate appears only for log loss on a competition in
the Redux layout. Beside each of the costliest mistakes, a class activation map (:func:`gallery_heatmaps`,
:mod:`kaggle_kit.cam`): that part rebuilds a backbone, so Keras is loaded there, never when this module is
imported; ``cam=False`` (``--no-cam``) skips it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from kaggle_kit import __version__
from kaggle_kit.artifacts import KitError, experiment_lock
from kaggle_kit.metrics import DEFAULT_METRIC, HIGHER_IS_BETTER, KAGGLE_EPS, METRICS, NAMES, log_loss
from kaggle_kit.store import (
    MISTAKES_CSV,
    BlendRecord,
    CvResult,
    LadderStep,
    command,
    experiment_metric,
    has_blend,
    load_blend,
    load_experiment,
    require_experiment,
    write_report_files,
)

if TYPE_CHECKING:
    from kaggle_kit.blend import CvInputs
    from kaggle_kit.cam import CamGallery

# Final private leaderboard of Dogs vs. Cats Redux (1,314 teams): (rank, log loss). The last point: 271 teams
# scored worse than predicting 0.5 everywhere (log 2 = 0.6931), so rank 1,314 - 271 = 1,043 scored 0.6931.
LEADERBOARD: tuple[tuple[int, float], ...] = (
    (1, 0.03302), (2, 0.03305), (3, 0.03483), (5, 0.03518), (10, 0.03807), (12, 0.03882), (20, 0.04183),
    (50, 0.04842), (65, 0.05038), (100, 0.05629), (131, 0.06127), (200, 0.07383), (657, 0.12216),
    (1043, 0.6931),
)
N_TEAMS = 1314
MEDALS = (("gold", 12), ("silver", 65), ("bronze", 131))  # (medal, last rank that gets it)
CLIP_RANGE = (1e-4, 0.1)
N_MISTAKES = 24
THUMBNAIL_PX = 128
_CAVEAT = "estimate from the OOF score; the private leaderboard was scored on other images"


# ------------------------------------------------------------------------------------------------ the core
def estimate_rank(loss: float) -> int:
    """The rank a log loss would have had on the final Redux leaderboard, interpolated linearly in log loss.

    Monotone (a lower loss never gets a worse rank); clamped to rank 1 below the winner's 0.03302 and to rank
    1,043 above 0.6931, the last figure known (the 271 teams below it are not spread out in the figures).
    """
    if not (math.isfinite(loss) and loss >= 0):
        raise ValueError(f"loss must be a finite number >= 0, got {loss}")
    ranks, losses = zip(*LEADERBOARD)
    return int(round(float(np.interp(loss, losses, ranks))))


def medal_zone(rank: int) -> str | None:
    """'gold' (ranks 1-12), 'silver' (13-65), 'bronze' (66-131), or None outside the medals."""
    for medal, last in MEDALS:
        if rank <= last:
            return medal
    return None


def leaderboard_sentence(loss: float) -> str:
    """One sentence placing ``loss`` on the final Redux leaderboard, with its medal zone and the caveat."""
    best, worst = LEADERBOARD[0][1], LEADERBOARD[-1][1]
    if loss > worst:
        return (f"worse than predicting 0.5 everywhere ({worst}): among the last {N_TEAMS - LEADERBOARD[-1][0]} "
                f"of {N_TEAMS:,} teams, outside the medal zones — {_CAVEAT}")
    rank = estimate_rank(loss)
    medal = medal_zone(rank)
    if medal is None:
        zone = f"outside the medal zones (bronze ends at rank {MEDALS[-1][1]})"
    else:
        i = [m for m, _ in MEDALS].index(medal)
        zone = f"{medal} medal zone (ranks {MEDALS[i - 1][1] + 1 if i else 1}-{MEDALS[i][1]})"
    ahead = f"better than the winner's {best}: " if loss < best else ""
    return f"{ahead}≈ rank {rank:,} of {N_TEAMS:,} — {_CAVEAT}; {zone}"


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram: ``edges`` (n_bins + 1,) uniform on [0, 1], ``counts`` (n_bins,) predictions per
    bin; ``prob_pred`` and ``prob_true`` (k,) the mean prediction and the fraction of positives of the k
    non-empty bins, in bin order (as ``sklearn.calibration.calibration_curve`` returns them)."""

    edges: np.ndarray
    counts: np.ndarray
    prob_pred: np.ndarray
    prob_true: np.ndarray


def reliability_bins(y: np.ndarray, p: np.ndarray, *, n_bins: int = 10) -> Reliability:
    """Reliability diagram of (n,) predictions ``p`` against (n,) labels ``y`` in ``n_bins`` uniform bins."""
    from sklearn.calibration import calibration_curve

    y, p = _finite_rows(y, p)
    if len(np.unique(y)) < 2:
        raise ValueError("a reliability diagram needs rows of both classes")
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # subtle: the same bin assignment as calibration_curve's uniform strategy (1.0 goes into the last bin).
    counts = np.bincount(np.searchsorted(edges[1:-1], p, side="right"), minlength=n_bins)
    return Reliability(edges=edges, counts=counts, prob_pred=prob_pred, prob_true=prob_true)


def clip_curve(y: np.ndarray, p: np.ndarray, *, low: float = CLIP_RANGE[0], high: float = CLIP_RANGE[1],
               n: int = 61) -> tuple[np.ndarray, np.ndarray]:
    """Log loss of clip(p, c, 1 - c) at ``n`` log-spaced clip levels c from ``low`` to ``high``.

    ``y`` and ``p`` are (n_rows,); returns (levels (n,), losses (n,)).
    """
    if not 0 < low < high < 0.5:
        raise ValueError(f"clip levels need 0 < low < high < 0.5, got low={low}, high={high}")
    y, p = _finite_rows(y, p)
    levels = np.geomspace(low, high, n)
    return levels, np.asarray(log_loss(y, np.clip(p[:, None], levels, 1.0 - levels)))


def row_losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(n,) log loss of each row as Kaggle scores it (``p`` clipped to [1e-15, 1 - 1e-15]); NaN where ``p`` is."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), KAGGLE_EPS, 1.0 - KAGGLE_EPS)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def top_mistakes(y: np.ndarray, p: np.ndarray, *, k: int = N_MISTAKES) -> np.ndarray:
    """Row indices of at most ``k`` mistakes (predictions on the wrong side of 0.5), most costly first.

    A mistake costs more than log 2; ties keep the row order. Rows where ``p`` is NaN are never returned.
    """
    losses = row_losses(y, p)
    wrong = np.flatnonzero(losses > math.log(2))  # NaN compares False: rows without a prediction drop out
    order = np.argsort(-losses[wrong], kind="stable")
    return wrong[order[:k]]


def loss_share(y: np.ndarray, p: np.ndarray, rows: np.ndarray) -> float:
    """The fraction of the total log loss (:func:`row_losses`, rows without a prediction left out) that ``rows``
    carry; 0.0 when the total is 0."""
    losses = row_losses(y, p)
    total = float(np.nansum(losses))
    return float(np.nansum(losses[rows])) / total if total > 0 else 0.0


def _finite_rows(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y {y.shape} and p {p.shape} must both be (n,)")
    keep = np.isfinite(p)
    if not keep.any():
        raise ValueError("no row has a finite prediction")
    return y[keep], p[keep]


# ------------------------------------------------------------------------------------------------- the edge
@dataclass(frozen=True)
class ModelRow:
    """One cv model for the table: its manifest's OOF scores by metric (None: not recorded or undefined),
    seconds, and its blend weight (None: not blended)."""

    model: str
    head: str
    features: str
    scores: dict[str, float | None]
    seconds: float | None
    weight: float | None


@dataclass(frozen=True)
class Gallery:
    """The costly mistakes, most costly first: training ids, labels, predictions, row log losses, and each
    photo's thumbnail as JPEG bytes (None when the photo cannot be found or decoded)."""

    ids: tuple[str, ...]
    y: np.ndarray
    p: np.ndarray
    losses: np.ndarray
    thumbnails: tuple[bytes | None, ...]
    n_mistakes: int
    classes: tuple[str, str]
    share: float  # of the OOF log loss, carried by all n_mistakes mistakes


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote: the page, its PNG plots, and the notes about what is missing."""

    path: Path
    plots: tuple[Path, ...]
    notes: tuple[str, ...]
    has_blend: bool
    n_models: int
    estimate: str
    cam_model: str | None = None
    cam_note: str | None = None
    mistakes: Path | None = None
    n_mistakes: int = 0

    def lines(self) -> list[str]:
        """What ``kaggle-kit report`` prints (its notes go to stderr): a summary, the plots, the list of mistakes,
        the page last."""
        listed = [f"OOF mistakes: {self.n_mistakes:,} in {self.mistakes}"] if self.mistakes is not None else []
        return [f"{self.n_models} models, {'blend' if self.has_blend else 'no blend'}; {self.estimate}",
                f"plots: {', '.join(str(p) for p in self.plots)}", *listed, str(self.path)]


def _optional_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _model_rows(results: dict[str, CvResult], weights: dict[str, float] | None) -> list[ModelRow]:
    return [ModelRow(model=model, head=r.head, features=", ".join(r.features),
                     scores={metric: _optional_float(r.score(metric)) for metric in METRICS},
                     seconds=_optional_float(r.seconds),
                     weight=None if weights is None or model not in weights else float(weights[model]))
            for model, r in results.items()]


def _usable_blend(exp_dir: Path) -> tuple[BlendRecord | None, str | None]:
    """(the blend, None), or (None, why there is no usable blend)."""
    if not has_blend(exp_dir):
        return None, f"no blend yet: run '{command(exp_dir, 'blend')}'"
    try:
        return load_blend(exp_dir), None
    except KitError as exc:
        return None, f"the blend cannot be used: {exc}"


def _find_images(exp_dir: Path, train_ids: tuple[str, ...]
                 ) -> tuple[dict[str, Path], tuple[str, str] | None, str | None, str | None]:
    """Map training ids to image files through the experiment's data folder; (map, classes, layout, note or
    None). The layout is the folder's (else the experiment's), None when neither is known."""
    from kaggle_kit.data import discover_remembered

    layout = None
    try:
        remembered = load_experiment(exp_dir)
        if remembered is None:
            return {}, None, None, f"no thumbnails: the experiment {exp_dir} does not remember its data folder"
        layout = remembered.layout
        dataset = discover_remembered(remembered)
    except KitError as exc:
        return {}, None, layout, f"no thumbnails: {exc}"
    files = dict(zip(dataset.train_ids, dataset.train_paths()))
    note = None
    if dataset.train_ids != train_ids:
        found = sum(i in files for i in train_ids)
        note = (f"the training ids in {dataset.root} do not match the fold plan's ({dataset.n_train} images vs "
                f"{len(train_ids)} rows, {found} of the plan's ids found): thumbnails are looked up by id, and the "
                "photos may have changed since 'kaggle-kit cv'")
    return files, dataset.classes, dataset.layout, note


def _experiment_metric(exp_dir: Path) -> str:
    """The metric the experiment remembers (log loss when it remembers none or cannot be read)."""
    try:
        return experiment_metric(exp_dir)
    except KitError:
        return DEFAULT_METRIC


def gallery_heatmaps(exp_dir: Path, inputs: CvInputs, rows: np.ndarray, thumbnails: tuple[bytes | None, ...],
                     files: dict[str, Path], *, progress: bool,
                     warn: Callable[[str], None]) -> tuple[CamGallery | None, str | None]:
    """Class activation maps of the gallery's photos (:func:`kaggle_kit.cam.gallery_cams`) from the models
    in ``inputs``, or (None, why not). Rebuilds a backbone: Keras is loaded here, never when the module is."""
    from kaggle_kit.cam import gallery_cams

    if len(rows) == 0:
        return None, None
    try:
        return gallery_cams(exp_dir, plan=inputs.folds, results=inputs.results, rows=rows, thumbnails=thumbnails,
                            files=files, progress=progress, warn=warn), None
    except KitError as exc:
        return None, f"no heatmaps: {exc}"


def thumbnail(path: Path, *, size: int = THUMBNAIL_PX, quality: int = 85) -> bytes | None:
    """JPEG bytes of the image at ``path`` scaled to fit ``size`` x ``size`` (aspect kept), or None if unreadable."""
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None or img.ndim != 3 or 0 in img.shape[:2]:
        return None
    h, w = img.shape[:2]
    scale = size / max(h, w)
    if scale < 1:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


# --------------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas, outside pyplot's global state (nothing to close or leak)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plot_reliability(curves: list[tuple[str, Reliability]], *, title: str) -> bytes:
    """PNG of a reliability diagram (one line per (label, Reliability)) over a histogram of the predictions."""
    fig = _figure(6.4, 6.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], ls=":", color="grey", label="perfectly calibrated")
    for label, r in curves:
        top.plot(r.prob_pred, r.prob_true, marker="o", label=label)
        bottom.stairs(r.counts, r.edges, label=label)
    top.set(ylabel="fraction of positives", title=title, xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left")
    bottom.set(xlabel="mean predicted P(positive) in the bin", ylabel="rows", yscale="log")
    return _png(fig)


def plot_clip_curve(levels: np.ndarray, losses: np.ndarray, *, unclipped: float, chosen: float,
                    chosen_loss: float, chosen_label: str, title: str) -> bytes:
    """PNG of OOF log loss against the clip level (log x axis), the chosen clip marked."""
    fig = _figure(6.4, 4.0)
    ax = fig.subplots()
    ax.plot(levels, losses, label="clip(p, c, 1 - c)")
    ax.axhline(unclipped, ls=":", color="grey", label=f"no clip ({unclipped:.5f})")
    ax.axvline(chosen, ls="--", color="tab:red")
    ax.plot([chosen], [chosen_loss], "o", color="tab:red",
            label=f"{chosen_label}: c = {chosen:.4g} ({chosen_loss:.5f})")
    ax.set(xscale="log", xlabel="clip level c", ylabel="OOF log loss", title=title)
    ax.legend()
    return _png(fig)


def plot_roc(curves: list[tuple[str, np.ndarray, np.ndarray]], *, title: str) -> bytes:
    """PNG of ROC curves, one per (label, y (n,), scores (n,)) (rows whose score is NaN left out), AUC in the
    legend (``sklearn.metrics.roc_curve`` and ``roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure(6.4, 6.4)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance (AUC 0.5)")
    for label, y, p in curves:
        y, p = _finite_rows(y, p)
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{label} (pooled AUC {roc_auc_score(y, p):.5f})")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    return _png(fig)


# ---------------------------------------------------------------------------------------------------- HTML
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 70em;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta { color: #666; }
.note { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.5em 1em; margin: 0.6em 0; }
.estimate { background: #eef6ee; border-left: 4px solid #3a3; padding: 0.6em 1em; font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.3em 0.8em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { font-weight: bold; }
figure { margin: 1em 0; } figcaption { color: #555; max-width: 50em; }
img.plot { max-width: 100%; border: 1px solid #eee; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { width: 140px; border: 1px solid #ddd; border-radius: 4px; padding: 4px; font-size: 0.8em; }
.card .thumb { height: 128px; display: flex; align-items: center; justify-content: center; background: #f6f6f6; }
.card .thumb img { max-width: 128px; max-height: 128px; }
.gallery.cams .card { width: 268px; } .card .pair { display: flex; gap: 4px; } .card .pair .thumb { width: 128px; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _models_table(rows: list[ModelRow], best: str, method: str | None, metric: str) -> str:
    weight_head = "blend weight" if method != "stack" else "blend coefficient (stack, on logits)"
    order = [metric] + [m for m in METRICS if m != metric]  # the competition's metric first
    score_heads = "".join(f"<th>OOF {_e(NAMES[m])}</th>" for m in order)
    out = [f'<table id="models"><thead><tr><th>model</th><th>head</th><th>features</th>{score_heads}'
           f'<th>seconds</th><th>{_e(weight_head)}</th></tr></thead><tbody>']
    for r in rows:
        weight = "-" if r.weight is None else format(r.weight, ".4f")
        cells = "".join(f'<td class="num">{_fmt(r.scores.get(m), ".5f")}</td>' for m in order)
        out.append(
            f'<tr data-model="{_e(r.model)}"{" class=best" if r.model == best else ""}><td>{_e(r.model)}</td>'
            f"<td>{_e(r.head)}</td><td>{_e(r.features)}</td>{cells}"
            f'<td class="num">{_fmt(r.seconds, ".2f")}</td><td class="num">{weight}</td></tr>'
        )
    out.append("</tbody></table>")
    return "".join(out)


def _ladder_table(ladder: tuple[LadderStep, ...], *, metric: str) -> str:
    out = [f'<table id="ladder"><thead><tr><th>step</th><th>OOF {_e(NAMES[metric])} (cross-fitted)</th>'
           "<th>detail</th></tr></thead><tbody>"]
    for s in ladder:
        out.append(f'<tr><td>{_e(s.step)}</td><td class="num">{s.score:.5f}</td>'
                   f'<td>{_e(s.detail)}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _figure_html(png: bytes, alt: str, caption: str) -> str:
    return (f'<figure><img class="plot" alt="{_e(alt)}" src="{_data_uri("image/png", png)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _gallery_html(g: Gallery, cams: CamGallery | None = None, cam_note: str | None = None) -> str:
    neg, pos = g.classes
    if g.n_mistakes == 0:
        return "<p>No OOF mistakes: every prediction is on the right side of 0.5.</p>"
    out = [f"<p>{g.n_mistakes:,} OOF predictions are on the wrong side of 0.5; they carry {g.share:.0%} of the OOF "
           f"log loss. The {len(g.ids)} most costly are shown, and report/{MISTAKES_CSV} lists them all. "
           "Mislabelled or unusual training photos show up here.</p>"]
    out.append(_cam_caption_html(cams, g.classes) if cams is not None else
               (f'<p class="note">{_e(cam_note)}</p>' if cam_note else ""))
    out.append('<div class="gallery cams">' if cams is not None else '<div class="gallery">')
    for n, (i, label, p, loss, jpeg) in enumerate(zip(g.ids, g.y, g.p, g.losses, g.thumbnails)):
        img = (f'<img alt="{_e(i)}" src="{_data_uri("image/jpeg", jpeg)}">' if jpeg is not None
               else "<span>no image</span>")
        text = f"<b>{_e(i)}</b><br>true: {_e(pos if label == 1 else neg)}<br>P({_e(pos)}) = {p:.4f}<br>loss {loss:.2f}"
        if cams is None:
            out.append(f'<div class="card"><div class="thumb">{img}</div>{text}</div>')
        else:
            out.append(f'<div class="card"><div class="pair"><div class="thumb">{img}</div>'
                       f"{_cam_cell_html(cams, n, i, pos)}</div>{text}{_cam_text_html(cams, n, pos)}</div>")
    out.append("</div>")
    return "".join(out)


def _cam_cell_html(cams: CamGallery, n: int, photo_id: str, pos: str) -> str:
    """The n-th gallery photo's heatmap (its class activation map over the photo), or why there is none."""
    jpeg = cams.jpegs[n]
    if jpeg is None:
        return '<div class="thumb"><span>no heatmap</span></div>'
    return (f'<div class="thumb heat"><img alt="heatmap of {_e(photo_id)}: evidence for {_e(pos)} in red" '
            f'src="{_data_uri("image/jpeg", jpeg)}"></div>')


def _cam_text_html(cams: CamGallery, n: int, pos: str) -> str:
    if cams.p[n] is None:
        return ""
    return (f'<br><span class="meta">fold model: P({_e(pos)}) = {cams.p[n]:.4f}, '
            f"map &#177;{cams.scales[n]:.1f}</span>")


def _cam_caption_html(cams: CamGallery, classes: tuple[str, str]) -> str:
    """What the heatmaps are, which model they come from, and how faithful its refit is."""
    neg, pos = classes
    h, w = cams.grid
    flips = {1: "", 2: " and their flipped copies"}.get(cams.views_fitted, f" in all {cams.views_fitted} views")
    mean = {1: "", 2: " (the mean over the photo and its flip, as cv predicts)"}.get(
        cams.views_predicted, f" (the mean over the photo's {cams.views_predicted} views, as cv predicts)")
    cs = ", ".join(f"{c:.3g}" for c in sorted(set(cams.Cs.values())))
    return (
        f'<p id="cam-caption">Beside each photo: the class activation map of <b>{_e(cams.model)}</b>, the '
        f"standardised logistic regression on the {_e(cams.backbone)} features ({cams.image_size} px, weights "
        f"{_e(cams.weights)}), drawn from its last feature map before pooling ({h} x {w} positions) and upsampled "
        "over the photo. Each position's value is the logit the head would give a photo made everywhere of that "
        "position; their mean is the head's logit for the photo as it is (not flipped). "
        f"Red: evidence for {_e(pos)}, blue: for {_e(neg)}, white: neither; each map is scaled to its own largest "
        "absolute value (given on its card). The cv stage keeps predictions, not fitted heads, so each photo's "
        f"fold model is refitted: on the other folds' rows{flips} of the plan's first repeat, at the C that fold "
        f"chose ({cs}). Its predictions{mean} differ from the cv stage's OOF ones by at most {cams.p_gap:.1g}; "
        "the backbone's recomputed features differ from the cached ones by at most "
        f"{cams.feature_gap:.1g} of the largest feature.</p>"
    )


def render_html(*, exp_name: str, header: str, notes: list[str], estimate: str, models_table: str,
                ladder: str, figures: list[str], gallery: str, estimate_title: str = "Leaderboard estimate",
                figures_title: str = "Calibration and clipping") -> str:
    """The report page from its parts: ``header``, ``notes`` and ``estimate`` are plain text, the rest HTML."""
    note_html = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>kaggle-kit report: {_e(exp_name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>kaggle-kit report: experiment {_e(exp_name)}</h1><p class=\"meta\">{_e(header)}</p>{note_html}"
        f"<h2>{_e(estimate_title)}</h2><p class=\"estimate\" id=\"estimate\">{_e(estimate)}</p>"
        f"<h2>Models</h2>{models_table}<h2>Ladder</h2>{ladder}<h2>{_e(figures_title)}</h2>{''.join(figures)}"
        f"<h2>The most costly OOF mistakes</h2>{gallery}</body></html>\n"
    )


def write_report(exp_dir: Path, *, progress: bool = True, warn: Callable[[str], None] = print,
                 cam: bool = True) -> ReportResult:
    """``kaggle-kit report``: write ``<exp>/report.html`` and ``<exp>/report/*.png`` from the experiment's cv
    results and blend; holds the experiment's lock.

    Needs the fold plan and at least one finished cv model; the blend, the data folder and the photos are
    optional, and the page says which of them are missing and why. The metric is the blend's (else the
    experiment's): it orders the model table and scores the ladder; log loss gets the reliability diagram and
    the clip curve, accuracy the reliability diagram, AUC the ROC curve. The Redux leaderboard estimate is given
    only for log loss on a competition in the Redux (``kaggle``) layout. ``cam``: draw the gallery's heatmaps
    (this rebuilds a backbone: see :func:`gallery_heatmaps`).
    """
    require_experiment(exp_dir)
    with experiment_lock(exp_dir, command="report"):
        return _write_report(exp_dir, progress=progress, warn=warn, cam=cam)


def _write_report(exp_dir: Path, *, progress: bool, warn: Callable[[str], None], cam: bool) -> ReportResult:
    from tqdm import tqdm

    from kaggle_kit.blend import CLIP_BOUNDS, best_clip, load_cv_inputs

    bar = tqdm(total=6, desc="report", unit="step", disable=not progress)
    bar.set_postfix_str("reading")
    inputs = load_cv_inputs(exp_dir, warn=warn)
    folds = inputs.folds
    y = folds.y
    blend, missing = _usable_blend(exp_dir)
    metric = blend.metric if blend is not None else _experiment_metric(exp_dir)
    name = NAMES[metric]
    notes = [missing] if missing else []
    rows = _model_rows(inputs.results, blend.weights if blend else None)
    # subtle: the best single model is the one the table ranks first, by its manifest's score in the metric; a
    # model without a finite score sorts last rather than failing the report.
    sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
    rows.sort(key=lambda r: (r.scores[metric] is None, sign * (r.scores[metric] or 0.0), r.model))
    best = rows[0].model
    best_p = inputs.oof[:, inputs.models.index(best)]
    files, classes, layout, image_note = _find_images(exp_dir, folds.train_ids)
    if blend is not None:
        final, final_name = np.asarray(blend.oof, dtype=np.float64), "the blend"
    else:
        final, final_name = best_p, f"the best single model, {best}"
    figures: list[str] = []
    pngs: dict[str, bytes] = {}
    bar.update()

    bar.set_postfix_str("reliability")
    if metric in ("logloss", "accuracy"):
        if blend is not None:
            before = np.asarray(blend.oof_uncalibrated, dtype=np.float64)
            final_name = "the calibrated blend"
            curves = [(f"blend, before calibration ({log_loss(*_finite_rows(y, before)):.5f})",
                       reliability_bins(y, before)),
                      (f"calibrated: {blend.calibration} ({log_loss(*_finite_rows(y, final)):.5f})",
                       reliability_bins(y, final))]
            rel_title = "Reliability of the blend's OOF predictions"
            after = ("no calibration lowered the cross-fitted log loss, so the two curves coincide"
                     if blend.calibration == "none" else f"after {blend.calibration} calibration")
            rel_caption = ("Cross-fitted OOF predictions of the blend before calibration (for each fold, the "
                           f"{blend.method} blender fitted on the other folds, as 'kaggle-kit blend' scores it); "
                           f"{after}. Log losses in the legend. Below: rows per bin.")
        else:
            curves = [(f"{best} ({log_loss(*_finite_rows(y, best_p)):.5f})", reliability_bins(y, best_p))]
            rel_title = f"Reliability of {best}'s OOF predictions"
            rel_caption = (f"OOF predictions of the best single model, {best} (averaged over repeats). No calibrated "
                           "curve: that comes with the blend. Below: rows per bin.")
        pngs["reliability"] = plot_reliability(curves, title=rel_title)
        figures.append(_figure_html(pngs["reliability"], rel_title, rel_caption))
    bar.update()

    bar.set_postfix_str("clip curve" if metric == "logloss" else "ROC curve" if metric == "auc" else "")
    if metric == "logloss":
        levels, losses = clip_curve(y, final)
        fy, fp = _finite_rows(y, final)
        if blend is not None:
            chosen, chosen_loss = blend.clip, blend.clip_logloss
            chosen_label = "chosen by 'kaggle-kit blend'"
        else:
            chosen, chosen_loss = best_clip(fp, fy)
            chosen_label = f"best in {CLIP_BOUNDS[0]:g}..{CLIP_BOUNDS[1]:g}, in-sample"
        unclipped = log_loss(fy, fp)
        pngs["clip_curve"] = plot_clip_curve(levels, losses, unclipped=unclipped, chosen=chosen,
                                             chosen_loss=chosen_loss, chosen_label=chosen_label,
                                             title=f"OOF log loss against the clip level: {final_name}")
        clip_caption = (f"Log loss of clip(p, c, 1 - c) on the OOF predictions of {final_name}, c log-spaced from "
                        f"{CLIP_RANGE[0]:g} to {CLIP_RANGE[1]:g}; no clip scores {unclipped:.5f}. 'kaggle-kit "
                        "submit' applies the blend's chosen clip.")
        figures.append(_figure_html(pngs["clip_curve"], "OOF log loss against the clip level", clip_caption))
    elif metric == "auc":
        curves = [(f"the best single model, {best}", y, best_p)]
        if blend is not None:
            curves.insert(0, (f"the blend ({blend.method}, cross-fitted)", y, final))
        pngs["roc"] = plot_roc(curves, title="ROC curves of the OOF predictions")
        figures.append(_figure_html(
            pngs["roc"], "ROC curves of the OOF predictions",
            "True against false positive rate of the OOF predictions as the threshold moves, every fold's rows "
            "together; their pooled AUC (scikit-learn's roc_auc_score) in the legend. The ladder's cross-fitted "
            "AUC is the mean of the AUCs within each fold, where one model scores every row as on a test set. Under "
            "AUC only the order of the predictions counts: no calibration and no clip."))
    bar.update()

    bar.set_postfix_str("thumbnails")
    if image_note:
        notes.append(image_note)
    rows_idx = top_mistakes(y, final)
    ids = tuple(folds.train_ids[i] for i in rows_idx)
    thumbs = tuple(thumbnail(files[i]) if i in files else None
                   for i in tqdm(ids, desc="thumbnails", unit="img", disable=not progress, leave=False))
    unreadable = [i for i, t in zip(ids, thumbs) if i in files and t is None]
    if unreadable:
        notes.append(f"cannot decode {len(unreadable)} of the gallery's photos (first: {files[unreadable[0]]})")
    per_row = row_losses(y, final)
    every = top_mistakes(y, final, k=len(y))
    gallery = Gallery(ids=ids, y=y[rows_idx], p=final[rows_idx], losses=per_row[rows_idx],
                      thumbnails=thumbs, n_mistakes=len(every), classes=classes or ("negative", "positive"),
                      share=loss_share(y, final, every))
    neg, pos = gallery.classes
    mistakes = pd.DataFrame({"id": [folds.train_ids[i] for i in every],
                             "label": [pos if y[i] == 1 else neg for i in every],
                             f"p_{pos}": final[every], "loss": per_row[every]})
    cams, cam_note = (gallery_heatmaps(exp_dir, inputs, rows_idx, thumbs, files, progress=progress, warn=warn)
                      if cam else (None, "no heatmaps: turned off (--no-cam)"))
    bar.update()

    bar.set_postfix_str("writing the page")
    if blend is not None:
        last = blend.ladder[-1]
        score = last.score
        score_name = f"the {'' if last.step == 'blend' else last.step + ' '}blend, cross-fitted"
        ladder = _ladder_table(blend.ladder, metric=metric)
    else:
        score = rows[0].scores[metric]
        score_name = f"the best single model {best}{', unclipped' if metric == 'logloss' else ''}"
        ladder = f'<p class="note">No ladder: {_e(missing)}</p>'
    redux = metric == "logloss" and layout in ("kaggle", None)
    if score is None:
        estimate = f"No estimate: the best model's manifest has no OOF {name}."
    elif redux:
        estimate = (f"OOF log loss {score:.5f} ({score_name}) on the final Dogs vs. Cats Redux leaderboard: "
                    f"{leaderboard_sentence(score)}")
    else:
        why = (f"the competition is scored by {name}" if metric != "logloss"
               else f"the competition is not in the Redux layout (it is in the {layout} layout)")
        estimate = (f"OOF {name} {score:.5f} ({score_name}). No leaderboard estimate: the published figures are "
                    f"Dogs vs. Cats Redux log losses, and {why}.")
    if blend is None:
        blend_text = "no blend"
    else:
        blend_text = (f"blend: {blend.method}, calibration {blend.calibration}, "
                      + (f"clip {blend.clip:.4g}" if blend.clip is not None else "no clip"))
    header = (f"metric: {name}. {len(y):,} training rows, {folds.n_folds} folds x {folds.repeats} repeats, "
              f"{len(rows)} models, {blend_text}. kaggle-kit {__version__}, "
              f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.")
    page = render_html(
        exp_name=exp_dir.name, header=header, notes=notes, estimate=estimate,
        models_table=_models_table(rows, best, blend.method if blend else None, metric), ladder=ladder,
        figures=figures, gallery=_gallery_html(gallery, cams, cam_note),
        estimate_title="Leaderboard estimate" if redux else f"Score ({name})",
        figures_title={"logloss": "Calibration and clipping", "accuracy": "Calibration",
                       "auc": "ROC curve"}[metric],
    )
    bar.update()
    bar.set_postfix_str("writing")
    path, plots, listed = write_report_files(exp_dir, page=page, plots=pngs, mistakes=mistakes)
    bar.update()
    bar.close()
    return ReportResult(path=path, plots=plots, notes=tuple(notes), has_blend=blend is not None,
                        n_models=len(rows), estimate=estimate, cam_model=cams.model if cams else None,
                        cam_note=cam_note, mistakes=listed, n_mistakes=len(every))
