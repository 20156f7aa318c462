"""Report: leaderboard interpolation, reliability bins, clip curve and mistakes; the page, opened in Chromium."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from typer.testing import CliRunner

from conftest import SQUEEZENET_H5, make_competition, write_cv_model
from kaggle_kit import blend as B
from kaggle_kit import report as R
from kaggle_kit.artifacts import read_json, write_json_atomic
from kaggle_kit.cam import gallery_cams
from kaggle_kit.cli import app
from kaggle_kit.cv import run_cv
from kaggle_kit.data import discover
from kaggle_kit.features import run_features
from kaggle_kit.folds import ensure_plan
from kaggle_kit.metrics import log_loss
from kaggle_kit.store import features_dir, load_blend, load_experiment, load_plan, save_experiment

MISLABELLED = (3, 40, 41)  # rows every model gets confidently wrong, as a mislabelled photo would be
UNREADABLE = 7  # a row without predictions, as an undecodable photo would be


# ------------------------------------------------------------------------------------------- leaderboard
@pytest.mark.parametrize("rank, loss", R.LEADERBOARD)
def test_published_figures_map_to_their_ranks(rank, loss):
    assert R.estimate_rank(loss) == rank


def test_rank_estimate_is_monotone_and_interpolates_between_figures():
    grid = np.linspace(0.0, 1.0, 20001)
    ranks = [R.estimate_rank(x) for x in grid]
    assert all(a <= b for a, b in zip(ranks, ranks[1:]))
    assert 20 < R.estimate_rank((0.04183 + 0.04842) / 2) < 50
    assert R.estimate_rank((0.12216 + 0.6931) / 2) == 850  # halfway between ranks 657 and 1,043


def test_rank_estimate_clamps_at_both_ends():
    assert R.estimate_rank(0.0) == R.estimate_rank(0.01) == 1
    assert R.estimate_rank(0.6931) == R.estimate_rank(0.9) == R.estimate_rank(30.0) == 1043


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_rank_estimate_refuses_impossible_losses(bad):
    with pytest.raises(ValueError, match="finite number >= 0"):
        R.estimate_rank(bad)


@pytest.mark.parametrize("rank, medal", [(1, "gold"), (12, "gold"), (13, "silver"), (65, "silver"),
                                         (66, "bronze"), (131, "bronze"), (132, None), (1314, None)])
def test_medal_zones(rank, medal):
    assert R.medal_zone(rank) == medal


def test_leaderboard_sentences_name_rank_zone_and_caveat():
    caveat = "estimate from the OOF score; the private leaderboard was scored on other images"
    s = R.leaderboard_sentence(0.04183)
    assert "≈ rank 20 of 1,314" in s and "silver medal zone (ranks 13-65)" in s and caveat in s
    assert "gold medal zone (ranks 1-12)" in R.leaderboard_sentence(0.035)
    assert "bronze medal zone (ranks 66-131)" in R.leaderboard_sentence(0.06)
    assert "outside the medal zones" in R.leaderboard_sentence(0.1)
    assert R.leaderboard_sentence(0.02).startswith("better than the winner's 0.03302: ≈ rank 1 of 1,314")
    worst = R.leaderboard_sentence(0.9)
    assert "worse than predicting 0.5 everywhere" in worst and "last 271 of 1,314" in worst and caveat in worst


# ---------------------------------------------------------------------------------------- reliability bins
def test_reliability_bins_agree_with_sklearn_and_count_every_finite_row():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.concatenate([rng.uniform(0, 1, 497), [0.0, 1.0, np.nan]])
    r = R.reliability_bins(y, p, n_bins=10)
    true, pred = calibration_curve(y[:499], p[:499], n_bins=10)
    np.testing.assert_allclose(r.prob_true, true)
    np.testing.assert_allclose(r.prob_pred, pred)
    assert r.counts.sum() == 499 and r.counts.shape == (10,)
    assert len(r.prob_pred) == (r.counts > 0).sum()
    nonempty = np.flatnonzero(r.counts)
    assert ((r.prob_pred >= r.edges[nonempty]) & (r.prob_pred <= r.edges[nonempty + 1])).all()


def test_reliability_of_a_calibrated_predictor_lies_near_the_diagonal():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, 20000) < p).astype(int)
    r = R.reliability_bins(y, p)
    assert np.abs(r.prob_true - r.prob_pred).max() < 0.05


# ------------------------------------------------------------------------------------------------ clip curve
def test_clip_curve_matches_clipped_log_loss_and_finds_the_best_clip():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 1000)
    p = np.where(rng.uniform(size=1000) < 0.98, y, 1 - y).astype(float)  # saturated, 2 % wrong
    levels, losses = R.clip_curve(y, p)
    assert levels[0] == pytest.approx(1e-4) and levels[-1] == pytest.approx(0.1)
    assert (np.diff(np.log(levels)) == pytest.approx(np.log(levels[1] / levels[0])))
    for c, loss in zip(levels[::10], losses[::10]):
        assert loss == pytest.approx(log_loss(y, np.clip(p, c, 1 - c)))
    # saturated predictions: the best constant clip is about the error rate (FACTS.md)
    err = float((p != y).mean())
    assert levels[np.argmin(losses)] == pytest.approx(err, rel=0.15)


def test_clip_curve_refuses_bad_bounds():
    with pytest.raises(ValueError, match="0 < low < high < 0.5"):
        R.clip_curve(np.array([0, 1]), np.array([0.2, 0.8]), low=0.1, high=0.01)


# ------------------------------------------------------------------------------------------------ mistakes
def test_top_mistakes_are_wrong_side_rows_most_costly_first():
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    p = np.array([0.9, 0.1, 0.01, 0.99, 0.4, np.nan, 0.001, 0.7])
    assert R.top_mistakes(y, p).tolist() == [6, 2, 3, 7, 4]
    assert R.top_mistakes(y, p, k=2).tolist() == [6, 2]
    assert R.top_mistakes(np.array([1, 0, 1]), np.array([0.2, 0.3, 0.2])).tolist() == [0, 2]  # ties: row order
    assert R.top_mistakes(y, y.astype(float)).tolist() == []


def test_loss_share_is_the_part_of_the_log_loss_some_rows_carry():
    y = np.array([1, 0, 1, 0, 1])
    p = np.array([0.9, 0.2, 0.01, np.nan, 0.5])
    losses = -np.log(np.array([0.9, 0.8, 0.01, 0.5]))  # the NaN row is left out of the total
    assert R.loss_share(y, p, np.array([2])) == pytest.approx(losses[2] / losses.sum())
    assert R.loss_share(y, p, np.array([0, 1, 2, 4])) == pytest.approx(1.0)
    assert R.loss_share(y, p, np.array([], dtype=int)) == 0.0
    assert R.loss_share(np.array([1, 0]), np.array([np.nan, np.nan]), np.array([0])) == 0.0  # nothing to share


def test_row_losses_average_to_the_log_loss():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = rng.uniform(0, 1, 300)
    assert R.row_losses(y, p).mean() == pytest.approx(log_loss(y, p))


# ---------------------------------------------------------------------------------------- the experiment
def build_experiment(root: Path, comp: Path, *, models=("m0", "m1", "m2"), strengths=(1.6, 1.1, 0.6),
                     n_folds: int = 3, seed: int = 1, scale: float = 1.0, blend: bool = True) -> Path:
    """Write ``experiments/exp/`` on the real photos of ``comp`` with the store's writers (and blend it).

    The models share part of their noise (so the blend still errs on a quarter of the rows), are all confidently
    wrong on the rows MISLABELLED and have no prediction for row UNREADABLE. ``scale`` > 1 makes every model
    overconfident (its logits multiplied by ``scale``). ``seed`` draws the fold plan and the noise; with the
    default one the gallery fills (N_MISTAKES mistakes or more) both here and for one weak model on 60 photos.
    """
    ds = discover(comp, positive="dog")
    exp_dir = root / "experiments" / "exp"
    save_experiment(exp_dir, data_dir=ds.root, positive="dog")
    rng = np.random.default_rng(seed)
    y = ds.y
    n = ds.n_train
    plan = ensure_plan(exp_dir, y=y, train_ids=ds.train_ids, test_ids=ds.test_ids, n_folds=n_folds, repeats=1,
                       seed=seed)[0]
    shared = rng.normal(0.0, 1.5, n)
    mislabelled = list(MISLABELLED)
    for j, (name, s) in enumerate(zip(models, strengths)):
        oof = expit(scale * (s * (2.0 * y - 1.0) + shared + rng.normal(0.0, 1.0, n)))
        # subtle: a mislabelled photo is a clear example of the other class, so each model is as sure of the wrong
        # label as its strength allows; equal certainties in every model would let a stack that cancels the
        # shared noise (weights of both signs) pull those rows back towards 0.5, below other mistakes.
        oof[mislabelled] = expit(-scale * 6.0 * s * (2.0 * y[mislabelled] - 1.0))
        oof[UNREADABLE] = np.nan
        write_cv_model(exp_dir, name, plan, oof[None, :], rng.uniform(0, 1, ds.n_test), features=["squeezenet"],
                       seconds=1.25 * (j + 1))
    if blend:
        B.run_blend(exp_dir, warn=lambda _: None)
    return exp_dir


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    return make_competition(tmp_path_factory.mktemp("report") / "comp", n_per_class=60, n_test=4)


@pytest.fixture(scope="module")
def blended(tmp_path_factory, comp) -> tuple[Path, R.ReportResult]:
    exp_dir = build_experiment(tmp_path_factory.mktemp("blended"), comp)
    return exp_dir, R.write_report(exp_dir, progress=False, warn=lambda _: None)


@pytest.fixture(scope="module")
def single(tmp_path_factory, comp) -> tuple[Path, R.ReportResult]:
    exp_dir = build_experiment(tmp_path_factory.mktemp("single"), comp, models=("only",), strengths=(2.0,),
                               blend=False)
    return exp_dir, R.write_report(exp_dir, progress=False, warn=lambda _: None)


# ---------------------------------------------------------------------------------------------- Chromium
# Injected into a copy of the page only (the report itself has no script): record every load error and
# console error, and on 'load' write what it found into <div id="kk-check"> for --dump-dom to show.
_PROBE = """<script>
window.__kkErrors = [];
window.addEventListener('error', function (e) {
  window.__kkErrors.push('error: ' + ((e.target && (e.target.alt || e.target.src || '').slice(0, 80)) || e.message));
}, true);
var __kkConsoleError = console.error;
console.error = function () {
  window.__kkErrors.push('console: ' + [].join.call(arguments, ' '));
  __kkConsoleError.apply(console, arguments);
};
window.addEventListener('load', function () {
  var imgs = [].slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.alt; });
  var d = document.createElement('div');
  d.id = 'kk-check';
  d.textContent = JSON.stringify({images: imgs.length, bad: bad, errors: window.__kkErrors});
  document.body.appendChild(d);
});
</script>"""


def chromium_check(page: Path, tmp_path: Path) -> dict:
    """Open a probed copy of ``page`` in headless Chromium; return {'images', 'bad', 'errors', 'console'}."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("Chromium is needed to check the report page: apt-get install -y chromium (.ci/run does)")
    text = page.read_text(encoding="utf-8")
    assert text.count("<head>") == 1
    probe = tmp_path / f"probe-{page.stem}.html"
    probe.write_text(text.replace("<head>", "<head>" + _PROBE), encoding="utf-8")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    found = re.search(r'<div id="kk-check">(.*?)</div>', done.stdout)
    assert found, f"Chromium did not run the check (exit {done.returncode}): {done.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    result["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return result


@pytest.mark.slow  # opens Chromium
def test_the_chromium_check_catches_a_broken_image_and_a_console_error(tmp_path):
    page = tmp_path / "broken.html"
    import cv2

    png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
                    '<img alt="ok" src="data:image/png;base64,' + base64.b64encode(png).decode()
                    + '"><img alt="broken" src="data:image/png;base64,AAAA"><img alt="missing" src="missing.png">'
                    "<script>console.error('boom')</script></body></html>")
    result = chromium_check(page, tmp_path)
    assert result["images"] == 3
    assert result["bad"] == ["broken", "missing"]
    assert any("boom" in e for e in result["errors"]) and sum(e.startswith("error:") for e in result["errors"]) == 2


def assert_renders_cleanly(page: Path, tmp_path: Path, *, n_images: int) -> None:
    result = chromium_check(page, tmp_path)
    assert result["images"] == n_images
    assert result["bad"] == [] and result["errors"] == [] and result["console"] == []


def assert_self_contained(text: str) -> None:
    assert "<script" not in text.lower()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text)
    assert refs and all(r.startswith("data:") for r in refs)
    assert "url(" not in text and "@import" not in text and "http://" not in text and "https://" not in text


def test_blended_report_is_one_self_contained_page_with_a_full_gallery(blended):
    exp_dir, result = blended
    text = result.path.read_text(encoding="utf-8")
    assert result.path == exp_dir / "report.html" and result.has_blend and result.notes == ()
    assert_self_contained(text)
    n_thumbs = text.count('src="data:image/jpeg;base64,')
    assert n_thumbs == text.count('class="card"') == R.N_MISTAKES  # the synthetic blend makes more mistakes
    # synthetic cv results without features: no model to map, and the page says so
    assert result.cam_model is None and result.cam_note.startswith("no heatmaps: no model to map")
    assert "heatmap of" not in text and _e_text(result.cam_note) in text



def test_every_oof_mistake_is_listed_most_costly_first_in_mistakes_csv(blended):
    exp_dir, result = blended
    inputs = B.load_cv_inputs(exp_dir, warn=lambda _: None)
    y, p = inputs.folds.y, load_blend(exp_dir).oof.astype(np.float64)
    wrong = np.flatnonzero(np.isfinite(p) & ((p > 0.5) != (y == 1)))
    listed = pd.read_csv(result.mistakes, dtype={"id": str})
    assert result.mistakes == exp_dir / "report" / "mistakes.csv" and result.n_mistakes == len(wrong) > R.N_MISTAKES
    assert list(listed.columns) == ["id", "label", "p_dog", "loss"]
    assert sorted(listed["id"]) == sorted(inputs.folds.train_ids[i] for i in wrong)
    assert listed["loss"].is_monotonic_decreasing
    row = {i: n for n, i in enumerate(inputs.folds.train_ids)}
    first = row[listed["id"][0]]
    assert listed["label"][0] == ("dog" if y[first] == 1 else "cat")
    assert listed["p_dog"][0] == pytest.approx(p[first], abs=1e-6)
    assert listed["loss"].to_numpy() == pytest.approx(R.row_losses(y, p)[[row[i] for i in listed["id"]]], abs=1e-6)
    share = listed["loss"].sum() / np.nansum(R.row_losses(y, p))  # rows without a prediction left out
    text = result.path.read_text(encoding="utf-8")
    assert f"{len(wrong):,} OOF predictions are on the wrong side of 0.5; they carry {share:.0%} of the OOF" in text
    assert result.lines()[-2] == f"OOF mistakes: {len(wrong):,} in {result.mistakes}"


@pytest.mark.slow  # opens Chromium
def test_blended_report_renders_in_chromium_with_every_image_loaded(blended, tmp_path):
    _, result = blended
    assert_renders_cleanly(result.path, tmp_path, n_images=2 + R.N_MISTAKES)


def _e_text(text: str) -> str:
    return html.escape(text, quote=True)


def test_plots_are_written_beside_the_page_and_embedded_in_it(blended):
    exp_dir, result = blended
    text = result.path.read_text(encoding="utf-8")
    assert [p.name for p in result.plots] == ["reliability.png", "clip_curve.png"]
    for path in result.plots:
        assert path.parent == exp_dir / "report"
        png = path.read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in text


def _table(text: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', text, re.S).group(1)
    return [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def test_model_table_and_ladder_hold_the_manifests_numbers(blended):
    exp_dir, result = blended
    text = result.path.read_text(encoding="utf-8")
    blend_manifest = read_json(exp_dir / "blend" / "manifest.json")
    rows = _table(text, "models")
    assert sorted(r[0] for r in rows) == ["m0", "m1", "m2"]
    for model, head, features, loss, auc, acc, seconds, weight in rows:  # the metric's column first
        m = read_json(exp_dir / "cv" / model / "manifest.json")
        assert (head, features) == ("logreg", "squeezenet")
        assert float(loss) == pytest.approx(m["scores"]["oof_logloss"], abs=5e-6)
        assert float(auc) == pytest.approx(m["scores"]["oof_auc"], abs=5e-6)
        assert float(acc) == pytest.approx(m["scores"]["oof_accuracy"], abs=5e-5)
        assert float(seconds) == pytest.approx(m["seconds"], abs=0.005)
        assert float(weight) == pytest.approx(blend_manifest["weights"][model], abs=5e-5)
    assert [float(r[3]) for r in rows] == sorted(float(r[3]) for r in rows)  # best single model first
    ladder = _table(text, "ladder")
    assert [r[0] for r in ladder] == ["best single model", "blend", "calibrated", "clipped"]
    for row, step in zip(ladder, blend_manifest["ladder"]):
        assert float(row[1]) == pytest.approx(step["oof_logloss"], abs=5e-6) and row[2] == step["detail"]


def test_model_table_leads_with_the_metric_and_shows_a_score_not_recorded_as_a_dash():
    row = R.ModelRow(model="old", head="logreg", features="f", scores={"logloss": 0.25, "auc": None,
                                                                       "accuracy": 0.875}, seconds=1.0, weight=None)
    html = R._models_table([row], "old", None, "auc")
    heads = [h for h in html.split("<th>")[1:]]
    assert [h.split("<")[0] for h in heads[3:6]] == ["OOF AUC", "OOF log loss", "OOF accuracy"]
    cells = [c.split("<")[0] for c in html.split('<td class="num">')[1:]]
    assert cells[:3] == ["-", "0.25000", "0.87500"]


def test_estimate_uses_the_clipped_blend_score(blended):
    exp_dir, result = blended
    clipped = read_json(exp_dir / "blend" / "manifest.json")["ladder"][-1]["oof_logloss"]
    assert f"OOF log loss {clipped:.5f} (the clipped blend, cross-fitted)" in result.estimate
    assert R.leaderboard_sentence(clipped) in result.estimate
    assert html.escape(result.estimate, quote=True) in result.path.read_text(encoding="utf-8")


def test_calibrated_blend_shows_both_curves_from_the_blends_saved_predictions(tmp_path, comp, monkeypatch):
    exp_dir = build_experiment(tmp_path, comp, scale=4.0, blend=False)
    B.run_blend(exp_dir, method="mean", warn=lambda _: None)
    m = read_json(exp_dir / "blend" / "manifest.json")
    assert m["calibration"]["kind"] != "none"  # overconfident models: calibration must help
    drawn = []
    real = R.reliability_bins
    monkeypatch.setattr(R, "reliability_bins", lambda y, p, **kw: drawn.append(np.asarray(p)) or real(y, p, **kw))
    text = R.write_report(exp_dir, progress=False, warn=lambda _: None).path.read_text(encoding="utf-8")
    assert f"after {m['calibration']['kind']} calibration." in text
    assert "blend coefficient" not in text and "<th>blend weight</th>" in text
    # The curves are the blend's own cross-fitted OOF predictions, read from disk, not recomputed.
    saved = [np.load(exp_dir / "blend" / f"{name}.npy") for name in ("oof_uncalibrated", "oof")]
    assert len(drawn) == 2
    for curve, array in zip(drawn, saved):
        np.testing.assert_array_equal(curve, array.astype(np.float64))
        assert np.isnan(curve[UNREADABLE]) and np.isfinite(curve).sum() == m["n_scored"]
    y = np.load(exp_dir / "folds" / "y.npy")
    steps = {s["step"]: s["oof_logloss"] for s in m["ladder"]}
    ok = np.isfinite(drawn[0])
    assert log_loss(y[ok], drawn[0][ok]) == pytest.approx(steps["blend"], rel=1e-5)
    assert log_loss(y[ok], drawn[1][ok]) == pytest.approx(steps["calibrated"], rel=1e-5)
    assert steps["calibrated"] < steps["blend"]


def test_gallery_shows_the_mislabelled_photos_first_with_their_labels(blended):
    exp_dir, result = blended
    text = result.path.read_text(encoding="utf-8")
    train_ids = read_json(exp_dir / "folds" / "ids.json")["train_ids"]
    shown = re.findall(r'<div class="card"><div class="thumb"><img alt="([^"]+)"', text)
    assert set(shown[:len(MISLABELLED)]) == {train_ids[i] for i in MISLABELLED}
    for i in MISLABELLED:
        true = "dog" if train_ids[i].startswith("dog") else "cat"
        assert re.search(rf'alt="{re.escape(train_ids[i])}".*?true: {true}<br>P\(dog\) = ', text)


def test_single_model_report_says_what_is_missing(single):
    exp_dir, result = single
    text = result.path.read_text(encoding="utf-8")
    assert not result.has_blend and result.n_models == 1
    assert result.notes == ("no blend yet: run 'kaggle-kit blend --exp exp'",)
    assert "no blend yet: run &#x27;kaggle-kit blend --exp exp&#x27;" in text and "No ladder" in text
    assert 'id="ladder"' not in text
    (row,) = _table(text, "models")
    m = read_json(exp_dir / "cv" / "only" / "manifest.json")
    assert row[0] == "only" and float(row[3]) == pytest.approx(m["scores"]["oof_logloss"], abs=5e-6)
    assert row[7] == "-"
    assert "the best single model only, unclipped" in result.estimate
    assert "No calibrated curve: that comes with the blend." in text
    assert_self_contained(text)
    assert all(p.exists() for p in result.plots)


@pytest.mark.slow  # opens Chromium
def test_single_model_report_renders_in_chromium(single, tmp_path):
    _, result = single
    text = result.path.read_text(encoding="utf-8")
    assert_renders_cleanly(result.path, tmp_path, n_images=2 + text.count('src="data:image/jpeg;base64,'))


def test_stale_blend_is_reported_not_used(tmp_path, comp):
    exp_dir = build_experiment(tmp_path, comp, models=("m0", "m1"), strengths=(2.0, 1.0))
    m1 = B.load_cv_inputs(exp_dir).results["m1"]
    write_cv_model(exp_dir, "m1", load_plan(exp_dir), m1.oof, m1.test, seconds=99.0)  # recomputed since the blend
    result = R.write_report(exp_dir, progress=False, warn=lambda _: None)
    assert not result.has_blend
    assert "the blend cannot be used" in result.notes[0] and "re-run 'kaggle-kit blend --exp exp'" in result.notes[0]


def test_changed_photos_are_reported_and_thumbnails_found_by_id(tmp_path):
    comp = make_competition(tmp_path / "comp", n_per_class=30, n_test=4)
    exp_dir = build_experiment(tmp_path, comp, strengths=(0.5,), models=("weak",), blend=False)
    (comp / "train" / "cat.30.jpg").unlink()
    result = R.write_report(exp_dir, progress=False, warn=lambda _: None)
    (note,) = [n for n in result.notes if "do not match" in n]
    assert "59 images vs 60 rows, 59 of the plan's ids found" in note
    text = result.path.read_text(encoding="utf-8")
    assert text.count('src="data:image/jpeg;base64,') + text.count("no image</span>") == R.N_MISTAKES


def test_missing_data_folder_leaves_the_thumbnails_out(tmp_path):
    comp = make_competition(tmp_path / "comp", n_per_class=30, n_test=4)
    exp_dir = build_experiment(tmp_path, comp, blend=False)
    shutil.rmtree(comp)
    result = R.write_report(exp_dir, progress=False, warn=lambda _: None)
    assert any(n.startswith("no thumbnails:") and "does not exist" in n for n in result.notes)
    assert "no image</span>" in result.path.read_text(encoding="utf-8")


# -------------------------------------------------------------------------------------- heatmaps (CAM)
@pytest.fixture(scope="module")
def mapped(tmp_path_factory, comp) -> tuple[Path, R.ReportResult]:
    """A real experiment on the 120 photos: SqueezeNet features (its real weights, flip TTA), the logreg head in
    cv (3 folds), no blend; and its report, heatmaps included."""
    exp_dir = tmp_path_factory.mktemp("mapped") / "experiments" / "exp"
    run_features(exp_dir, backbone="squeezenet", data=comp, weights=str(SQUEEZENET_H5), tta="flip",
                 warn=lambda _: None, progress=False)
    run_cv(exp_dir, n_folds=3, seed=0, heads=["logreg"], progress=False)
    return exp_dir, R.write_report(exp_dir, progress=False, warn=lambda _: None)


@pytest.mark.slow
def test_heatmaps_beside_every_mistake_render_in_chromium(mapped, tmp_path):
    exp_dir, result = mapped
    text = result.path.read_text(encoding="utf-8")
    assert result.cam_model == "squeezenet__logreg" and result.cam_note is None
    assert result.notes == ("no blend yet: run 'kaggle-kit blend --exp exp'",)
    n_cards = text.count('class="card"')
    thumbs = re.findall(r'<img alt="([^"]+)" src="data:image/jpeg;base64,', text)
    heatmaps = [a for a in thumbs if a.startswith("heatmap of ")]
    photos = [a for a in thumbs if not a.startswith("heatmap of ")]
    assert n_cards >= 1 and len(photos) == len(heatmaps) == n_cards  # a heatmap beside every mistake
    assert heatmaps == [f"heatmap of {p}: evidence for dog in red" for p in photos]
    caption = re.search(r'<p id="cam-caption">(.*?)</p>', text).group(1)
    assert "<b>squeezenet__logreg</b>" in caption and "14 x 14 positions" in caption and "flipped copies" in caption
    assert_self_contained(text)
    assert_renders_cleanly(result.path, tmp_path, n_images=2 + len(thumbs))  # every image loaded: naturalWidth > 0


@pytest.mark.slow
def test_heatmaps_come_from_the_cv_models_own_fold_heads(mapped):
    """The refitted fold heads reproduce cv's OOF predictions, the rebuilt backbone its cached features, and
    each map's mean is its head's logit."""
    exp_dir, _ = mapped
    inputs = B.load_cv_inputs(exp_dir, warn=lambda _: None)
    y = inputs.folds.y
    rows = R.top_mistakes(y, inputs.oof[:, 0])
    ds = discover(load_experiment(exp_dir).data_dir)
    files = dict(zip(ds.train_ids, ds.train_paths()))
    thumbs = tuple(R.thumbnail(files[inputs.folds.train_ids[r]]) for r in rows)
    cams = gallery_cams(exp_dir, plan=inputs.folds, results=inputs.results, rows=rows, thumbnails=thumbs,
                        files=files)
    assert cams.model == "squeezenet__logreg" and cams.grid == (14, 14) and cams.views_fitted == 2
    assert cams.p_gap < 2e-3 and cams.feature_gap < 1e-4
    for m, logit, p in zip(cams.maps, cams.logits, cams.p):
        assert m.mean() == pytest.approx(logit, abs=1e-9)
    oof = inputs.oof[rows, 0]
    np.testing.assert_allclose(cams.p, oof, atol=2e-3)
    assert all(jpeg is not None for jpeg in cams.jpegs)


@pytest.mark.slow
def test_heatmaps_say_why_when_the_weights_file_is_gone_and_find_it_in_a_weights_folder(mapped, tmp_path,
                                                                                       monkeypatch):
    exp_dir, _ = mapped
    copy = tmp_path / "exp"
    shutil.copytree(exp_dir, copy)
    manifest_path = features_dir(copy, "squeezenet") / "manifest.json"  # the file moved since: as if made there
    manifest = read_json(manifest_path)
    manifest["weights_path"] = str(tmp_path / "moved" / SQUEEZENET_H5.name)
    write_json_atomic(manifest_path, manifest)
    monkeypatch.delenv("KAGGLE_KIT_WEIGHTS", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    result = R.write_report(copy, progress=False, warn=lambda _: None)
    assert result.cam_model is None
    assert result.cam_note == (f"no heatmaps: the weights file the features 'squeezenet' were made with "
                               f"({tmp_path / 'moved' / SQUEEZENET_H5.name}) is not there any more, nor in the "
                               "weights folders ($KAGGLE_KIT_WEIGHTS)")
    assert "heatmap of" not in result.path.read_text(encoding="utf-8")
    monkeypatch.setenv("KAGGLE_KIT_WEIGHTS", str(SQUEEZENET_H5.parent))  # the same file, found by name and hash
    assert R.write_report(copy, progress=False, warn=lambda _: None).cam_model == "squeezenet__logreg"
    assert R.write_report(copy, progress=False, warn=lambda _: None, cam=False).cam_note == \
        "no heatmaps: turned off (--no-cam)"


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_report_prints_the_page_path_last(tmp_path, comp, monkeypatch):
    build_experiment(tmp_path, comp, models=("m0", "m1"), strengths=(2.0, 1.0))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "--exp", "exp", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(Path("experiments/exp/report.html"))
    assert "2 models, blend" in result.stdout and "≈ rank" in result.stdout
    assert "note: no heatmaps: no model to map" in result.stderr  # synthetic models on no features
    off = CliRunner().invoke(app, ["report", "--exp", "exp", "-q", "--no-cam"])
    assert off.exit_code == 0, off.output
    assert "note: no heatmaps: turned off (--no-cam)" in off.stderr and "no model to map" not in off.stderr


def test_cli_report_of_a_missing_experiment_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "--exp", "nothing"])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
