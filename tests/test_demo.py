import functools
import hashlib
import math
import re
import shutil
import urllib.error
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SQUEEZENET_H5, cli_params

from kaggle_kit import demo
from kaggle_kit.artifacts import KitError
from kaggle_kit.cli import app
from kaggle_kit.data import discover

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-mini"
runner = CliRunner()


def _key(root: Path) -> dict[str, int]:
    lines = (root / demo.ANSWER_KEY).read_text().splitlines()
    assert lines[0] == "id,label"
    return {i: int(y) for i, y in (line.split(",") for line in lines[1:])}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("no network")


# ------------------------------------------------------------------------------ the synthetic competition
def test_synthetic_competition_is_kaggle_layout_with_an_answer_key(tmp_path):
    root = demo.make_synthetic_competition(tmp_path / "syn", n_per_class=6, n_test=5, seed=1)
    ds = discover(root)
    assert ds.layout == "kaggle" and ds.classes == ("cat", "dog") and ds.positive == "dog"
    assert ds.n_train == 12 and int(ds.y.sum()) == 6
    assert ds.test_ids == ("1", "2", "3", "4", "5") and ds.has_sample_submission and not ds.warnings
    key = _key(root)
    assert list(key) == list(ds.test_ids) and sorted(key.values()) == [0, 0, 0, 1, 1]
    for f in ds.train_files + ds.test_files:
        image = cv2.imread(str(root / f))
        assert image is not None and 200 <= image.shape[0] <= 360 and 240 <= image.shape[1] <= 400


def test_synthetic_competition_is_a_function_of_its_seed(tmp_path):
    a, b, c = (demo.make_synthetic_competition(tmp_path / name, n_per_class=2, n_test=2, seed=seed)
               for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert [_sha(a / f) for f in files] == [_sha(b / f) for f in files]
    assert [_sha(a / f) for f in files] != [_sha(c / f) for f in files]


def test_synthetic_classes_differ_visibly():
    rng = np.random.default_rng(0)
    blue_minus_red = {
        positive: np.mean([(lambda im: im[..., 0].mean() - im[..., 2].mean())(
            demo.synthetic_photo(rng, positive=positive, height=64, width=80)) for _ in range(20)])
        for positive in (False, True)
    }
    assert blue_minus_red[True] > 20 > -20 > blue_minus_red[False]


# ----------------------------------------------------------------------------- the cats_and_dogs sample
def _fake_archive(path: Path) -> dict[str, tuple[str, int]]:
    """A small cats_and_dogs_filtered.zip of real photos; returns validation photo hash -> (name, label)."""
    validation = {}
    with zipfile.ZipFile(path, "w") as zf:
        for split, numbers in (("train", (1, 2, 3)), ("validation", (4, 5))):
            for cls in ("cat", "dog"):
                for n in numbers:
                    source = MINI / "train" / f"{cls}.{n}.jpg"
                    number = n + 1000 * (split == "validation")
                    zf.write(source, f"cats_and_dogs_filtered/{split}/{cls}s/{cls}.{number}.jpg")
                    if split == "validation":
                        validation[_sha(source)] = (source.name, int(cls == "dog"))
    return validation


def test_the_archive_is_arranged_in_kaggle_layout_with_a_true_answer_key(tmp_path, monkeypatch):
    archive = tmp_path / "fake.zip"
    validation = _fake_archive(archive)
    monkeypatch.setattr(demo, "download_file", lambda url, dest, *, timeout: shutil.copyfile(archive, dest))
    cache = tmp_path / "cache"
    root = demo.fetch_cats_and_dogs(cache, seed=0, progress=lambda msg: None)

    ds = discover(root)
    assert root == cache / "cats_and_dogs_filtered" and ds.layout == "kaggle"
    assert ds.train_ids == ("cat.1", "cat.2", "cat.3", "dog.1", "dog.2", "dog.3")
    for cls in ("cat", "dog"):
        for n in (1, 2, 3):
            assert _sha(root / "train" / f"{cls}.{n}.jpg") == _sha(MINI / "train" / f"{cls}.{n}.jpg")
    assert ds.test_ids == ("1", "2", "3", "4") and ds.has_sample_submission
    key = _key(root)
    assert list(key) == list(ds.test_ids)
    assert sorted((validation[_sha(root / "test" / f"{i}.jpg")][1], y) for i, y in key.items()) == \
        [(0, 0), (0, 0), (1, 1), (1, 1)]
    assert not (cache / "cats_and_dogs_filtered.zip").exists()
    assert sorted(p.name for p in cache.iterdir()) == ["cats_and_dogs_filtered"]

    monkeypatch.setattr(demo, "download_file", _no_network)  # a finished arrangement is reused, offline too
    assert demo.fetch_cats_and_dogs(cache, seed=0, progress=lambda msg: None) == root


def test_a_damaged_archive_is_deleted_and_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "download_file", lambda url, dest, *, timeout: dest.write_bytes(b"not a zip"))
    with pytest.raises(KitError, match="cannot be used .* it was deleted"):
        demo.fetch_cats_and_dogs(tmp_path, progress=lambda msg: None)
    assert list(tmp_path.iterdir()) == []


def test_the_download_is_atomic(tmp_path, monkeypatch):
    class Broken:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n=-1):
            raise TimeoutError("timed out")

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Broken())
    with pytest.raises(TimeoutError):
        demo.download_file("https://example.invalid/x.zip", tmp_path / "x.zip")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- the offline fallback
def test_without_network_the_demo_falls_back_to_a_synthetic_smoke_run(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "download_file", _no_network)
    prepared = demo.prepare_demo_data(tmp_path / "cache", n_per_class=3, n_test=2, progress=lambda msg: None)
    assert prepared.smoke and prepared.root == tmp_path / "cache" / "synthetic"
    assert prepared.note.startswith("SMOKE RUN: cannot get cats_and_dogs_filtered (no network)")
    assert "\n" not in prepared.note
    assert discover(prepared.root).n_train == 6 and _key(prepared.root)

    monkeypatch.setattr(demo, "make_synthetic_competition", lambda *a, **k: pytest.fail("not reused"))
    assert demo.prepare_demo_data(tmp_path / "cache", n_per_class=3, n_test=2).root == prepared.root


# ---------------------------------------------------------------------------------------------- scoring
def test_score_against_an_answer_key(tmp_path):
    key = tmp_path / "key.csv"
    key.write_text("id,label\n1,1\n2,0\n3,1\n4,0\n")
    perfect, half, unknown = (tmp_path / n for n in ("perfect.csv", "half.csv", "unknown.csv"))
    perfect.write_text("id,label\n4,0.000001\n3,0.999999\n2,0.000001\n1,0.999999\n")
    half.write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n4,0.5\n")
    unknown.write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n5,0.5\n")
    best = demo.score_submission(perfect, key)
    assert best.n == 4 and best.accuracy == 1.0 and best.logloss < 1e-5
    assert demo.score_submission(half, key).logloss == pytest.approx(math.log(2))
    with pytest.raises(KitError, match="different ids .1 only in the key, 1 only in the submission"):
        demo.score_submission(unknown, key)


def test_demo_refuses_a_bad_experiment_name_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--exp", "../escape", "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "invalid experiment name" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not (tmp_path / "cache").exists()


@pytest.mark.slow  # runs EfficientNet-Lite0 over photos
# ------------------------------------------------------------------------------------------ end to end
def test_smoke_run_end_to_end(tmp_path, monkeypatch):
    """The whole offline demo on a tiny synthetic competition: labelled, scored, the submission path last."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "download_file", _no_network)
    monkeypatch.setattr(demo, "prepare_demo_data",
                        functools.partial(demo.prepare_demo_data, n_per_class=15, n_test=6))
    result = runner.invoke(app, ["demo", "--cache", str(tmp_path / "cache"), "--head", "logreg"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("SMOKE RUN:")
    submission = Path(lines[-1])
    assert submission.parent == Path("submissions") and submission.name.startswith("SMOKE-RUN-demo-smoke-")
    rows = submission.read_text().splitlines()
    assert rows[0] == "id,label" and [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 7)]
    assert any(line.startswith("OOF log loss (5-fold, cross-fitted): best single model ") for line in lines)
    assert any(line.startswith("scored against the answer key ") for line in lines)
    assert (tmp_path / "experiments" / "demo-smoke" / "blend" / "manifest.json").exists()


# ------------------------------------------------------------------------------------------------ the recipe
MALARIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "malaria-mini"
GROUPS = "^(.*?)[Tt]hin"  # malaria-mini's slide/patient id: the part of the file name before ThinF/thinF
# The recipe's seven feature sets, by the names the brief gives them (not computed: this checks the computation).
RECIPE_SETS = ["efficientnet_lite0", "efficientnet_lite2_224", "efficientnet_lite0_128-block5x",
               "squeezenet_128-fire6_concat.avgmax", "squeezenet_128-fire5_concat.avgmax",
               "squeezenet_160-fire6_concat.avgmax", "squeezenet_192"]
RECIPE_CONCAT_SETS = ["squeezenet_192", "squeezenet_128-fire6_concat.avgmax", "squeezenet_160-fire6_concat.avgmax",
                      "squeezenet_128-fire5_concat.avgmax"]


def parses(command_line: str) -> dict:
    """The options ``kaggle-kit ...`` would run with, choices as their plain values (see conftest.cli_params)."""
    return {k: getattr(v, "value", v) for k, v in cli_params(command_line).items()}


def printed_commands(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("$ kaggle-kit ")]


class _Done:
    """What a faked stage returns: its lines of output (and, for blend, the ladder)."""

    def __init__(self, text: str, path: Path | None = None):
        self.text, self.path = text, path

    def lines(self) -> list[str]:
        return [self.text]

    def ladder_line(self) -> str:
        return "ladder: faked"


@pytest.fixture
def faked_stages(monkeypatch):
    """The four stage functions replaced by recorders: a list of (stage, keyword arguments) in call order. The
    fake submit writes ``id,label`` with 0.5 for the ids of the answer key the test puts in ``keys`` (if any)."""
    calls: list[tuple[str, dict]] = []
    keys: list[Path] = []

    def features(exp_dir, **kw):
        calls.append(("features", {"exp_dir": exp_dir, **kw}))
        return [_Done(f"features {kw['backbone']} {layer}") for layer in kw["layers"]]

    def cv(exp_dir, **kw):
        calls.append(("cv", {"exp_dir": exp_dir, **kw}))
        return _Done("cv done")

    def blend(exp_dir, **kw):
        calls.append(("blend", {"exp_dir": exp_dir}))
        return _Done("blend done")

    def submit(exp_dir, *, name, root):
        calls.append(("submit", {"exp_dir": exp_dir, "name": name}))
        path = Path(root) / "submissions" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = [line.split(",")[0] for line in keys[0].read_text().splitlines()[1:]] if keys else ["1"]
        path.write_text("id,label\n" + "".join(f"{i},0.5\n" for i in ids))
        return _Done(f"wrote {path}", path)

    monkeypatch.setattr("kaggle_kit.features.run_feature_sets", features)
    monkeypatch.setattr("kaggle_kit.cv.run_cv", cv)
    monkeypatch.setattr("kaggle_kit.blend.run_blend", blend)
    monkeypatch.setattr("kaggle_kit.submit.make_submission", submit)
    return calls, keys


@pytest.fixture
def weights_env(tmp_path, monkeypatch):
    """No weights folder but the ones a test names: $KAGGLE_KIT_WEIGHTS unset, Keras's cache an empty folder."""
    monkeypatch.delenv("KAGGLE_KIT_WEIGHTS", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))


def test_the_recipe_runs_the_commands_it_prints(tmp_path, monkeypatch, faked_stages, weights_env):
    """Each printed '$ kaggle-kit ...' line parses with the CLI into the very arguments its stage was called
    with: the printed lines are the recipe as commands. The sets, sizes, layers and heads are the recipe's."""
    calls, _ = faked_stages
    monkeypatch.chdir(tmp_path)
    comp = tmp_path / "comp"
    comp.mkdir()
    weights = SQUEEZENET_H5.parent
    result = runner.invoke(app, ["demo", "--recipe", "--data", str(comp), "--positive", "Parasitized", "--views",
                                 "3", "--view-kind", "rotations", "--groups", GROUPS, "--weights-dir", str(weights)])
    assert result.exit_code == 0, result.output
    commands = printed_commands(result.stdout)
    parsed = [parses(c) for c in commands]
    assert [p["command"] for p in parsed] == [c for c, _ in calls] == ["features"] * 6 + ["cv", "cv", "blend", "submit"]
    exp_dir = tmp_path / "experiments" / "demo-recipe"
    assert all(kw["exp_dir"].resolve() == exp_dir for _, kw in calls)
    assert all(p["exp"] == "demo-recipe" for p in parsed)

    steps = [(kw["backbone"], kw["image_size"], tuple(kw["layers"]), kw["pool"]) for _, kw in calls[:6]]
    assert steps == [("efficientnet_lite0", None, ("last",), "avg"), ("efficientnet_lite2", 224, ("last",), "avg"),
                     ("efficientnet_lite0", 128, ("block5x",), "avg"),
                     ("squeezenet", 128, ("fire6_concat", "fire5_concat"), "avgmax"),
                     ("squeezenet", 160, ("fire6_concat",), "avgmax"), ("squeezenet", 192, ("last",), "avg")]
    for p, (_, kw) in zip(parsed[:6], calls[:6]):
        assert (p["backbone"], p["image_size"], p["weights"], p["tta"], p["views"], p["view_kind"]) == \
            (kw["backbone"], kw["image_size"], kw["weights"], kw["tta"], kw["views"], kw["view_kind"])
        assert (p["data"], p["positive"]) == (kw["data"], kw["positive"]) == (comp, "Parasitized")
        assert (p["layer"] or ["last"]) == kw["layers"] and p["pool"] == kw["pool"]
        assert (kw["tta"], kw["views"], kw["view_kind"]) == ("flip", 3, "rotations")
        assert kw["weights"] == (str(weights) if kw["backbone"] == "squeezenet" else "imagenet")

    (_, cv_all), (_, cv_concat) = calls[6:8]
    assert cv_all["feature_sets"] == parsed[6]["backbone"] == RECIPE_SETS
    assert cv_all["heads"] == parsed[6]["head"] == ["logreg"]
    assert cv_all["groups"] == parsed[6]["groups"] == GROUPS and cv_all["n_folds"] == parsed[6]["folds"] == 5
    assert cv_concat["feature_sets"] == parsed[7]["backbone"] == RECIPE_CONCAT_SETS
    assert cv_concat["heads"] == parsed[7]["head"] == ["concat"] and parsed[7]["groups"] is None
    assert parsed[9]["name"] == calls[9][1]["name"] and calls[9][1]["name"].startswith("demo-recipe-")
    assert result.stdout.splitlines()[-1] == str(Path("submissions") / calls[9][1]["name"])


def test_without_recipe_the_demo_runs_and_prints_what_it_did_before(tmp_path, monkeypatch, faked_stages):
    """The default demo's stages get the arguments they always got, and print the same command lines."""
    calls, _ = faked_stages
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--data", "comp", "--head", "logreg"])
    assert result.exit_code == 0, result.output
    name = calls[-1][1]["name"]
    assert printed_commands(result.stdout) == [
        "kaggle-kit features --data comp --exp demo --backbone efficientnet_lite0 --tta flip",
        "kaggle-kit cv --exp demo --folds 5 --backbone efficientnet_lite0 --head logreg",
        "kaggle-kit blend --exp demo",
        f"kaggle-kit submit --exp demo --name {name}",
    ]
    (_, features), (_, cv) = calls[:2]
    assert {k: features[k] for k in ("backbone", "weights", "image_size", "tta", "views", "layers")} == \
        {"backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": None, "tta": "flip", "views": 0,
         "layers": ["last"]}
    assert (cv["feature_sets"], cv["heads"], cv["groups"], cv["n_folds"]) == (["efficientnet_lite0"], ["logreg"],
                                                                              None, 5)

    calls.clear()
    assert runner.invoke(app, ["demo", "--data", "comp", "--folds", "3"]).exit_code == 0
    assert calls[1][0] == "cv" and (calls[1][1]["heads"], calls[1][1]["n_folds"]) == (None, 3)  # cv's default heads


def test_the_recipe_smoke_run_uses_its_own_experiment(tmp_path, monkeypatch, faked_stages, weights_env):
    """Offline, --recipe runs on the synthetic competition, in <exp>-smoke, scored against its answer key."""
    calls, keys = faked_stages
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "download_file", _no_network)
    monkeypatch.setattr(demo, "prepare_demo_data", functools.partial(demo.prepare_demo_data, n_per_class=3, n_test=4))
    keys.append(tmp_path / "cache" / "synthetic" / demo.ANSWER_KEY)
    monkeypatch.setenv("KAGGLE_KIT_WEIGHTS", str(SQUEEZENET_H5.parent))
    result = runner.invoke(app, ["demo", "--recipe", "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("SMOKE RUN:") and lines[-2].startswith("SMOKE RUN finished")
    assert [c for c, _ in calls] == ["features"] * 6 + ["cv", "cv", "blend", "submit"]
    assert {kw["exp_dir"].name for _, kw in calls} == {"demo-recipe-smoke"}
    assert {kw["data"] for _, kw in calls[:6]} == {tmp_path / "cache" / "synthetic"}
    assert {kw["weights"] for _, kw in calls[:6]} == {"imagenet"}  # found in $KAGGLE_KIT_WEIGHTS by the stage
    assert any(line.startswith("scored against the answer key ") and "on 4 test images" in line for line in lines)
    assert Path(lines[-1]).name.startswith("SMOKE-RUN-demo-recipe-smoke-")


@pytest.mark.parametrize("args, message", [
    (["--backbone", "squeezenet"], "--recipe runs its own backbones; drop --backbone squeezenet"),
    (["--head", "mlp"], "--recipe fixes its heads"),
    (["--views", "4", "--view-kind", "rotations"], "--views 4 is out of range for --view-kind rotations"),
    (["--groups", "(unclosed"], "is not a regular expression"),
    ([], "demo: no weights file for squeezenet"),
])
def test_the_recipe_refuses_bad_options_in_one_line_before_any_stage(tmp_path, monkeypatch, faked_stages,
                                                                      weights_env, args, message):
    """Conflicting options, bad views or groups and a missing SqueezeNet weights file stop the demo in one line
    before it downloads or computes anything; the weights message says what to attach and the option to use."""
    calls, _ = faked_stages
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "download_file", lambda *a, **k: pytest.fail("nothing is downloaded"))
    result = runner.invoke(app, ["demo", "--recipe", "--cache", str(tmp_path / "cache"), *args])
    assert result.exit_code == 2 and message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stdout == ""
    assert calls == [] and not (tmp_path / "cache").exists() and not (tmp_path / "experiments").exists()
    if not args:
        assert "squeezenet_v1.1_imagenet_notop.h5" in result.stderr and "--weights-dir DIR" in result.stderr


def _malaria_subset(dest: Path, *, n_per_class: int, n_test: int) -> Path:
    """A tiny malaria-mini in its class-folder layout, symlinked: per class the first cell of each of the first
    ``n_per_class`` slides (so that group-wise folds have groups to share out), test ids 1..n_test, no answer key."""
    import re

    for cls in ("Parasitized", "Uninfected"):
        (dest / "train" / cls).mkdir(parents=True)
        first_of_slide: dict[str, Path] = {}
        for path in sorted((MALARIA / "train" / cls).iterdir()):
            first_of_slide.setdefault(re.search(GROUPS, path.name).group(1), path)
        for path in list(first_of_slide.values())[:n_per_class]:
            (dest / "train" / cls / path.name).symlink_to(path)
    (dest / "test").mkdir()
    for i in range(1, n_test + 1):
        (dest / "test" / f"{i}.png").symlink_to(MALARIA / "test" / f"{i}.png")
    return dest


@pytest.mark.slow  # runs the recipe's six backbone passes (EfficientNet-Lite0 at 320 px, Lite2 at 224 px, ...)
def test_the_recipe_end_to_end_on_a_few_cells(tmp_path, monkeypatch, weights_env):
    """The real recipe on 24 training cells and 6 test cells, with quarter turns and patient-wise folds: every
    feature set is made as printed, the plan keeps each slide in one fold, every model is fitted and blended."""
    from kaggle_kit.store import features_dir, load_cv_results, load_features, load_plan

    comp = _malaria_subset(tmp_path / "cells", n_per_class=12, n_test=6)
    monkeypatch.chdir(tmp_path)
    weights = SQUEEZENET_H5.parent
    result = runner.invoke(app, ["demo", "--recipe", "--data", str(comp), "--positive", "Parasitized", "--views",
                                 "1", "--view-kind", "rotations", "--groups", GROUPS, "--weights-dir", str(weights)])
    assert result.exit_code == 0, result.output
    commands = printed_commands(result.stdout)
    common = f"--data {comp} --exp demo-recipe --backbone"
    tail = "--tta flip --views 1 --view-kind rotations --positive Parasitized"
    assert commands[:8] == [
        f"kaggle-kit features {common} efficientnet_lite0 {tail}",
        f"kaggle-kit features {common} efficientnet_lite2 --image-size 224 {tail}",
        f"kaggle-kit features {common} efficientnet_lite0 --image-size 128 --layer block5x {tail}",
        f"kaggle-kit features {common} squeezenet --image-size 128 --layer fire6_concat --layer fire5_concat "
        f"--pool avgmax --weights {weights} {tail}",
        f"kaggle-kit features {common} squeezenet --image-size 160 --layer fire6_concat --pool avgmax --weights "
        f"{weights} {tail}",
        f"kaggle-kit features {common} squeezenet --image-size 192 --weights {weights} {tail}",
        "kaggle-kit cv --exp demo-recipe --folds 5 --groups '^(.*?)[Tt]hin' "
        + " ".join(f"--backbone {s}" for s in RECIPE_SETS) + " --head logreg",
        "kaggle-kit cv --exp demo-recipe --folds 5 " + " ".join(f"--backbone {s}" for s in RECIPE_CONCAT_SETS)
        + " --head concat",
    ]
    assert commands[8] == "kaggle-kit blend --exp demo-recipe" and commands[9].startswith("kaggle-kit submit ")
    for command in commands:
        parses(command)

    exp_dir = tmp_path / "experiments" / "demo-recipe"
    for name in RECIPE_SETS:
        fs = load_features(features_dir(exp_dir, name))
        assert fs.views == ("rot90",) and fs.tta == "flip" and len(fs.train_ids) == 24 and len(fs.test_ids) == 6
        assert sorted(fs.arrays) == sorted(f"{split}{v}" for split in ("train", "test")
                                           for v in ("", "_flip", "_rot90", "_rot90_flip"))
        assert all(np.isfinite(a).all() and a.std() > 0 for a in fs.arrays.values())
    plan = load_plan(exp_dir)
    groups = [re.search(GROUPS, Path(i).name).group(1) for i in plan.train_ids]  # the name, not its folder
    assert plan.groups == GROUPS and plan.n_groups == len(set(groups)) and plan.n_folds == 5
    for g in set(groups):  # a slide's cells share one fold
        assert len({plan.plan[0, k] for k, h in enumerate(groups) if h == g}) == 1
    models = load_cv_results(exp_dir, plan=plan)
    assert sorted(models) == sorted([f"{s}__logreg" for s in RECIPE_SETS] + ["concat__logreg"])
    assert models["concat__logreg"].features == tuple(RECIPE_CONCAT_SETS)
    assert load_features(features_dir(exp_dir, "squeezenet_128-fire5_concat.avgmax")).width == 2 * 256
    lines = result.stdout.strip().splitlines()
    rows = Path(lines[-1]).read_text().splitlines()
    assert rows[0] == "id,label" and sorted(r.split(",")[0] for r in rows[1:]) == [str(i) for i in range(1, 7)]
    assert all(0 < float(r.split(",")[1]) < 1 for r in rows[1:])
    assert not any(line.startswith("scored against") for line in lines)  # no answer key in the subset
