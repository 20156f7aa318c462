"""A messy competition folder (broken, odd and stray files among real photos) runs features -> cv -> blend ->
submit to a valid submission, naming every file it could not use; a folder that cannot be used at all stops
with one line and exit code 2."""

from __future__ import annotations

import csv
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from conftest import MINI, make_competition
from kaggle_kit.cli import app
from kaggle_kit.data import discover
from kaggle_kit.images import decode_image
from kaggle_kit.store import load_features

runner = CliRunner()
FEATURES = ["features", "--backbone", "resnet50", "--weights", "none", "--image-size", "32", "--batch-size", "8",
            "--quiet"]
N_PER_CLASS, N_TEST = 12, 8
PHOTO = MINI / "train" / "cat.20.jpg"  # not among the copied photos


# ------------------------------------------------------------------------------------------- the bad files
def _bgr() -> np.ndarray:
    return cv2.imread(str(PHOTO))


def _encode(ext: str, img: np.ndarray) -> bytes:
    return cv2.imencode(ext, img)[1].tobytes()


def _truncated() -> bytes:
    raw = PHOTO.read_bytes()
    return raw[: len(raw) // 2]


def _garbage() -> bytes:
    return np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()


def _cmyk(path: Path) -> None:
    Image.open(PHOTO).convert("CMYK").save(path, "JPEG")


def _huge(path: Path) -> None:
    big = np.zeros((9000, 12000, 3), np.uint8)
    big[:, :6000] = (0, 0, 255)  # plain content: a 12,000 x 9,000 JPEG of under 2 MB
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 50])


def _bomb() -> bytes:
    """A real photo whose frame header claims 65,000 x 65,000 pixels (libjpeg would decode it as gray)."""
    raw = bytearray(PHOTO.read_bytes())
    sof = raw.find(b"\xff\xc0")
    raw[sof + 5: sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(raw)


@dataclass(frozen=True)
class Case:
    """One file of the messy folder: what it is, where, and what becomes of it.

    ``fate``: 'used' (decodes, is a row), 'unreadable' (a row, warned about, left out / given the prior),
    'ignored' (not a row, warned about), 'hidden' (a dot file or in a dot folder: silently not a row).
    """

    what: str
    rel: str
    fate: str
    make: object  # bytes, or a function writing the file at a path

    def write(self, root: Path) -> None:
        path = root / self.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(self.make):
            self.make(path)
        else:
            path.write_bytes(self.make)


CASES = [
    Case("truncated JPEG", "train/cat.13.jpg", "unreadable", _truncated()),
    Case("corrupt JPEG (garbage bytes)", "train/dog.13.jpg", "unreadable", _garbage()),
    Case("zero-byte file", "train/cat.14.jpg", "unreadable", b""),
    Case("PNG named .jpg", "train/dog.14.jpg", "used", _encode(".png", _bgr())),
    Case("grayscale JPEG", "train/cat.15.jpg", "used", _encode(".jpg", cv2.cvtColor(_bgr(), cv2.COLOR_BGR2GRAY))),
    Case("CMYK JPEG", "train/dog.15.jpg", "used", _cmyk),
    Case("16-bit PNG", "train/cat.16.png", "used", _encode(".png", _bgr().astype(np.uint16) * 257)),
    Case("12,000 x 9,000 JPEG", "train/dog.16.jpg", "used", _huge),
    Case("text file", "train/notes.txt", "ignored", b"photos from the kennel"),
    Case(".DS_Store", "train/.DS_Store", "hidden", b"\0\0\0\1Bud1"),
    Case("hidden folder", "test/.ipynb_checkpoints/1-checkpoint.jpg", "hidden", PHOTO.read_bytes()),
    Case("name not <class>.<n>", "train/readme.jpg", "ignored", PHOTO.read_bytes()),
    Case("name not <class>.<n>", "train/cat_12.jpg", "ignored", PHOTO.read_bytes()),
    Case("WebP named .jpg", "test/9.jpg", "used", _encode(".webp", _bgr())),
    Case("PNG with alpha", "test/10.png", "used", _encode(".png", cv2.cvtColor(_bgr(), cv2.COLOR_BGR2BGRA))),
    Case("unreadable test image (garbage)", "test/11.jpg", "unreadable", b"this is not a JPEG at all"),
    Case("unreadable test image (truncated)", "test/12.jpg", "unreadable", _truncated()),
    Case("decompression bomb header", "test/13.jpg", "unreadable", _bomb()),
    Case("Thumbs.db", "test/Thumbs.db", "ignored", b"\xd0\xcf\x11\xe0"),
    Case("duplicate test id (5.jpg exists)", "test/5.png", "ignored", _encode(".png", _bgr())),
    Case("id in superscript digits", "test/\u00b2.jpg", "used", PHOTO.read_bytes()),
    Case("name not valid UTF-8", os.fsdecode(b"test/caf\xe9.jpg"), "ignored", PHOTO.read_bytes()),
]


def make_messy(dest: Path) -> Path:
    make_competition(dest, n_per_class=N_PER_CLASS, n_test=N_TEST)
    for case in CASES:
        case.write(dest)
    return dest


def shown(case: Case, root: Path) -> str:
    """The file as a warning names it (bytes that are not UTF-8 shown as \\xNN)."""
    return os.fsencode(root / case.rel).decode("utf-8", "backslashreplace")


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class MessyRun:
    root: Path
    comp: Path
    results: dict


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> MessyRun:
    root = tmp_path_factory.mktemp("messy")
    comp = make_messy(root / "comp")
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for step in ([*FEATURES, "--data", str(comp)], ["cv", "--head", "logreg", "--folds", "3", "-q"],
                     ["blend"], ["submit", "--name", "messy.csv"]):
            results[step[0]] = runner.invoke(app, step)
    return MessyRun(root=root, comp=comp.resolve(), results=results)


@pytest.mark.slow  # runs a Keras backbone over photos
def test_every_stage_succeeds_without_a_traceback(messy):
    for step, result in messy.results.items():
        assert result.exit_code == 0, f"{step}: {result.output}"
        assert "Traceback" not in result.output
    assert (messy.root / "submissions" / "messy.csv").is_file()


@pytest.mark.slow  # runs a Keras backbone over photos
def test_every_bad_file_is_named_in_a_warning_and_every_good_one_is_used(messy):
    err = messy.results["features"].stderr
    lines = err.strip().splitlines()
    assert all(line.startswith(("warning: ", "WARNING: ")) for line in lines), err
    fs = load_features(messy.root / "experiments" / "default" / "features" / "resnet50_32")
    dataset = discover(messy.comp)
    rows = set(dataset.train_files) | set(dataset.test_files)
    assert list(fs.train_ids) == list(dataset.train_ids) and list(fs.test_ids) == list(dataset.test_ids)
    unreadable = set(fs.manifest["unreadable"]["train"]) | set(fs.manifest["unreadable"]["test"])
    for case in CASES:
        name = shown(case, messy.comp)
        mentions = [line for line in lines if name + ":" in line or name + ";" in line]
        if case.fate == "used":
            assert not mentions, f"{case.what}: {mentions}"
            assert case.rel in rows and case.rel not in unreadable, case.what
        elif case.fate == "unreadable":
            assert len(mentions) == 1 and "cannot decode" in mentions[0], f"{case.what}: {err}"
            assert case.rel in rows and case.rel in unreadable, case.what
        elif case.fate == "ignored":
            assert len(mentions) == 1 and mentions[0].startswith("warning: ignored "), f"{case.what}: {err}"
            assert case.rel not in rows, case.what
        else:  # hidden: silently not a row
            assert not mentions and case.rel not in rows, case.what
    assert "caf\\xe9.jpg: its name is not valid UTF-8" in err
    assert "duplicate test id '5' (kept " in err
    assert fs.manifest["unreadable_ids"] == {"train": ["cat.13", "cat.14", "dog.13"], "test": ["11", "12", "13"]}


def expected_test_ids() -> list[str]:
    return [str(i) for i in range(1, 14)] + ["\u00b2"]  # numbers in numeric order, then other names


def read_submission(run: MessyRun) -> list[list[str]]:
    with open(run.root / "submissions" / "messy.csv", newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


@pytest.mark.slow  # runs a Keras backbone over photos
def test_the_submission_has_every_test_id_once_with_labels_in_range(messy):
    rows = read_submission(messy)
    assert rows[0] == ["id", "label"]
    ids = [r[0] for r in rows[1:]]
    assert ids == expected_test_ids() and len(set(ids)) == len(ids)
    labels = np.array([float(r[1]) for r in rows[1:]])
    clip = float(messy.results["submit"].stdout.split("labels in [")[1].split(",")[0])
    assert np.isfinite(labels).all() and labels.min() >= clip and labels.max() <= 1 - clip


@pytest.mark.slow  # runs a Keras backbone over photos
def test_an_unreadable_test_image_gets_the_training_prior(messy):
    readable = [c for c in CASES if c.rel.startswith("train/") and c.fate == "used" and "." in Path(c.rel).stem]
    n_dog = N_PER_CLASS + sum(Path(c.rel).name.startswith("dog.") for c in readable)
    n_cat = N_PER_CLASS + sum(Path(c.rel).name.startswith("cat.") for c in readable)
    prior = n_dog / (n_dog + n_cat)  # 15 / 29: the readable training images' share of dogs
    clip = float(messy.results["submit"].stdout.split("labels in [")[1].split(",")[0])
    labels = {r[0]: float(r[1]) for r in read_submission(messy)[1:]}
    for unreadable in ("11", "12", "13"):
        assert labels[unreadable] == pytest.approx(np.clip(prior, clip, 1 - clip), abs=1e-6)
    others = [v for k, v in labels.items() if k not in ("11", "12", "13")]
    assert not np.allclose(others, prior, atol=1e-6)  # the readable ones got predictions of their own


@pytest.mark.slow  # runs a Keras backbone over photos
# ------------------------------------------------------------------------------------------- the decoder
def test_a_huge_jpeg_with_a_small_file_is_decoded_at_reduced_scale(messy, monkeypatch):
    path = messy.comp / "train" / "dog.16.jpg"
    assert path.stat().st_size < 4_000_000  # the file size says nothing about the pixel count
    flags = []
    imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda data, flag: flags.append(flag) or imdecode(data, flag))
    img = decode_image(path, 32)
    assert flags == [cv2.IMREAD_REDUCED_COLOR_8]  # 1,500 x 1,125 decoded, not 12,000 x 9,000
    assert img.shape == (32, 32, 3) and img[:, :14, 0].min() > 200 and img[:, 18:, 0].max() < 50


_MAGIC = [b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xc0\x00\x11\x08", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
          b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM", b"II*\x00", b"MM\x00*", b"GIF89a", b""]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(magic=st.sampled_from(_MAGIC), body=st.binary(max_size=400))
def test_decoding_any_bytes_gives_an_image_or_none(tmp_path, magic, body):
    path = tmp_path / "x.jpg"
    path.write_bytes(magic + body)
    img = decode_image(path, 16)
    assert img is None or (img.shape == (16, 16, 3) and img.dtype == np.uint8)


# ------------------------------------------------------------------------------------ unusable folders
@pytest.mark.parametrize("layout, names, message", [
    ("no train folder", ["images/cat.1.jpg", "test/1.jpg"], "no training folder "),
    ("no test folder", ["train/cat.1.jpg", "train/dog.1.jpg"], "no test folder "),
    ("empty", ["train/.DS_Store", "train/notes.txt", "test/Thumbs.db"], "no training images found in "),
    ("no test images", ["train/cat.1.jpg", "train/dog.1.jpg", "test/notes.txt"], "no test images found in "),
    ("single class", ["train/cat.1.jpg", "train/cat.2.jpg", "test/1.jpg"], "has only class 'cat'; a binary "
                                                                            "competition needs exactly two"),
    ("single class folder", ["train/cats/cat.1.jpg", "test/1.jpg"], "has only class 'cats'"),
    ("three classes", ["train/cat.1.jpg", "train/dog.1.jpg", "train/bird.1.jpg", "test/1.jpg"], "3 classes"),
])
def test_an_unusable_folder_stops_with_one_line_and_exit_2(tmp_path, monkeypatch, layout, names, message):
    comp = tmp_path / "comp"
    comp.mkdir()
    for name in names:
        path = comp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" if not name.endswith(".jpg") else PHOTO.read_bytes())
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*FEATURES, "--data", str(comp)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "experiments").exists()  # a refused run leaves nothing behind


@pytest.mark.slow  # runs a Keras backbone over photos
@pytest.mark.parametrize("what", ["every dog unreadable", "too few images for the inner folds"])
def test_cv_on_unusable_training_rows_is_one_line_exit_2(tmp_path, monkeypatch, what):
    comp = tmp_path / "comp"
    make_competition(comp, n_per_class=4, n_test=2)
    if what == "every dog unreadable":
        for path in (comp / "train").glob("dog.*.jpg"):
            path.write_bytes(b"junk")
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, [*FEATURES, "--data", str(comp)]).exit_code == 0
    result = runner.invoke(app, ["cv", "--head", "logreg", "--folds", "2", "-q"])
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0, result.output


# ------------------------------------------------------------------------------------------ untrusted files
class _Evil:
    """Unpickling this creates ``marker``: proof that a loader ran code from a file."""

    marker = ""

    def __reduce__(self):
        return open, (self.marker, "w")


def _pickled_array(marker: Path) -> np.ndarray:
    _Evil.marker = str(marker)
    return np.array([_Evil(), 1], dtype=object)


def test_arrays_holding_pickles_are_refused_by_every_loader(tmp_path, monkeypatch):
    from kaggle_kit import blend, cv, features, store
    from kaggle_kit.artifacts import KitError
    from kaggle_kit.store import experiment_dir, features_dir, save_experiment

    marker = tmp_path / "pwned"
    comp = make_competition(tmp_path / "comp", n_per_class=12, n_test=4)
    dataset = discover(comp)
    exp_dir = experiment_dir("default", root=tmp_path)
    rng = np.random.default_rng(0)
    arrays = {"train": rng.standard_normal((dataset.n_train, 4)).astype(np.float32),
              "test": rng.standard_normal((dataset.n_test, 4)).astype(np.float32)}
    fs_dir = features_dir(exp_dir, "ext")
    features.write_feature_set(fs_dir, dataset, arrays, backbone="ext", note="synthetic")
    save_experiment(exp_dir, data_dir=dataset.root, positive="dog")
    cv.run_cv(exp_dir, data_dir=dataset.root, positive="dog", n_folds=3, heads=["logreg"], progress=False)
    blend.run_blend(exp_dir, warn=lambda m: None)

    def poison(path: Path) -> None:
        np.save(path, _pickled_array(marker), allow_pickle=True)

    # Each file a later stage reads, replaced in turn by a pickle: refused (or recomputed), never unpickled.
    checks = [
        (fs_dir / "train.npy", lambda: store.load_features(fs_dir)),
        (exp_dir / "folds" / "plan.npy", lambda: store.load_plan(exp_dir)),
        (exp_dir / "cv" / "ext__logreg" / "oof.npy", lambda: store.load_cv_result(exp_dir, "ext__logreg")),
        (exp_dir / "cv" / "ext__logreg" / "test.npy", lambda: blend.load_cv_inputs(exp_dir)),
        (exp_dir / "blend" / "test.npy", lambda: store.load_blend(exp_dir)),
        (exp_dir / "blend" / "oof_uncalibrated.npy", lambda: store.load_blend(exp_dir)),
    ]
    for path, load in checks:
        original = path.read_bytes()
        poison(path)
        with pytest.raises(KitError, match="cannot read|do not match"):
            load()
        path.write_bytes(original)
    key = store.load_features(fs_dir).key
    assert store.cached_feature_set(fs_dir, "any key") is None and store.cached_feature_set(fs_dir, key) is not None
    poison(fs_dir / "train.npy")
    assert store.cached_feature_set(fs_dir, key) is None  # recomputed, not trusted
    shard = tmp_path / "train-00000.npz"
    np.savez(shard, feats=_pickled_array(marker), ok=np.ones(2, bool))
    assert store.load_shard(shard) is None  # a damaged shard is recomputed
    assert not marker.exists()


def test_the_source_never_unpickles_arrays_nor_runs_a_shell():
    import ast

    import kaggle_kit

    problems = []
    for path in sorted(Path(kaggle_kit.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("subprocess", "pty") for n in names):
                    problems.append(f"{where}: imports {names}")
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if func in ("np.load", "numpy.load"):
                value = keywords.get("allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where}: {func} without allow_pickle=False")
            if func in ("os.system", "os.popen", "eval", "exec", "pickle.load", "pickle.loads") \
                    or func.startswith("os.exec") or func.startswith("os.spawn"):
                problems.append(f"{where}: calls {func}")
            shell = keywords.get("shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                problems.append(f"{where}: shell=")
    assert not problems


def test_the_demo_refuses_an_archive_that_would_write_outside_its_folder(tmp_path, monkeypatch):
    import zipfile

    from kaggle_kit import demo
    from kaggle_kit.artifacts import KitError

    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats_and_dogs_filtered/train/cats/cat.1.jpg", PHOTO.read_bytes())
        zf.writestr("../../escaped.txt", "outside the cache")
    monkeypatch.setattr(demo, "download_file", lambda url, dest, *, timeout: shutil.copyfile(archive, dest))
    cache = tmp_path / "a" / "cache"
    with pytest.raises(KitError, match="would be written outside .*it was deleted"):
        demo.fetch_cats_and_dogs(cache, progress=lambda m: None)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "a" / "escaped.txt").exists()
    assert not (cache / "cats_and_dogs_filtered.zip").exists()
    assert not (cache / "cats_and_dogs_filtered").exists()
