"""Submission files (header, ids, order, range, no overwrite, no escape) and the Kaggle API wrapper (offline)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import stat
import sys
import types
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kaggle_kit import kaggle_api
from kaggle_kit import submit as S
from kaggle_kit.artifacts import KitError, save_npy_atomic
from kaggle_kit.blend import run_blend
from kaggle_kit.store import load_blend
from kaggle_kit.cli import app
from test_blend import write_experiment

NOW = datetime(2026, 1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def blended_once(tmp_path_factory) -> Path:
    """A working folder holding a blended experiment 'default', made once for the module."""
    root = tmp_path_factory.mktemp("blended")
    run_blend(write_experiment(root), warn=lambda m: None)
    return root


@pytest.fixture
def blended(blended_once, tmp_path, monkeypatch):
    """A tmp working folder holding a copy of the blended experiment 'default'; returns its exp_dir (relative)."""
    shutil.copytree(blended_once / "experiments", tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    return Path("experiments/default")


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def submission_order(exp_dir: Path) -> list[str]:
    return json.loads((exp_dir / "folds" / "ids.json").read_text())["test_ids"]


# ---------------------------------------------------------------------------------------------- the file
@pytest.mark.parametrize("clip", ["auto", "0.005", "0.0123454"])
def test_submission_has_every_id_once_in_order_inside_the_clip(blended, clip):
    s = S.make_submission(blended, clip=clip, competition="x", now=NOW)
    assert s.path == Path("submissions/default-20260102-030405.csv")
    rows = read_rows(s.path)
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == submission_order(blended)
    labels = np.array([float(r[1]) for r in rows[1:]])
    c = S.resolve_clip(clip, load_blend(blended).clip)
    lo, hi = s.label_range
    assert lo >= c and hi == pytest.approx(1 - lo) and lo == pytest.approx(c, abs=1e-6)
    assert np.isfinite(labels).all() and labels.min() >= lo and labels.max() <= hi
    assert not list(Path("submissions").glob(".*"))  # no temporary file left behind


def test_accuracy_writes_hard_labels(blended):
    s = S.make_submission(blended, metric="accuracy", name="hard.csv", competition="x")
    rows = read_rows(s.path)
    assert {r[1] for r in rows[1:]} <= {"0", "1"}
    expected = (np.load(blended / "blend" / "test.npy") >= 0.5).astype(int).astype(str).tolist()
    assert [r[1] for r in rows[1:]] == expected


def test_never_overwrites(blended):
    first = S.make_submission(blended, name="mine.csv", competition="x")
    before = first.path.read_bytes()
    with pytest.raises(KitError, match="already exists.*never overwritten"):
        S.make_submission(blended, name="mine.csv", clip="0.01", competition="x")
    assert first.path.read_bytes() == before


@pytest.mark.parametrize("name", ["../evil.csv", "a/b.csv", "..csv", ".hidden.csv", "x\\y.csv", "noext"])
def test_names_that_leave_submissions_are_refused(blended, name):
    with pytest.raises(KitError, match="--name"):
        S.make_submission(blended, name=name, competition="x")
    assert not Path("evil.csv").exists() and not Path("submissions").exists()


def test_nan_prediction_is_refused_naming_the_ids(tmp_path, monkeypatch):
    exp_dir = write_experiment(tmp_path)
    test = np.load(exp_dir / "cv" / "m0" / "test.npy")
    test[[2, 9]] = np.nan
    save_npy_atomic(exp_dir / "cv" / "m0" / "test.npy", test)
    monkeypatch.chdir(tmp_path)
    run_blend(Path("experiments/default"), method="mean", warn=lambda m: None)
    ids = submission_order(Path("experiments/default"))
    with pytest.raises(KitError, match=rf"2 of 60 test predictions are NaN or inf \(ids {ids[2]}, {ids[9]}\)"):
        S.make_submission(Path("experiments/default"), competition="x")
    assert not Path("submissions").exists() or not list(Path("submissions").iterdir())


def test_clip_values_are_checked(blended):
    for bad in ("0.5", "-0.1", "nan", "1e-9"):
        with pytest.raises(KitError, match="--clip must be a number"):
            S.make_submission(blended, clip=bad, competition="x")
    with pytest.raises(KitError, match="'auto' or a number"):
        S.make_submission(blended, clip="high", competition="x")


def test_grid_clip_bounds_are_on_the_written_grid():
    for c in (1e-6, 0.005, 0.0123454, 0.013, 0.3333333):
        lo, hi = S.grid_clip(c)
        assert lo >= c and lo - c < 1e-6
        assert float(f"{lo:.6f}") == lo and float(f"{hi:.6f}") == hi and hi == pytest.approx(1 - lo)


@pytest.mark.parametrize("text, problem", [
    ("id,prob\n1,0.5\n2,0.5\n", "header"),
    ("id,label\n2,0.5\n1,0.5\n", "order"),
    ("id,label\n1,0.5\n1,0.5\n", "repeated"),
    ("id,label\n1,0.5\n2,\n", "not numbers"),
    ("id,label\n1,0.5\n2,0.999\n", "outside"),
])
def test_validation_catches_bad_files(tmp_path, text, problem):
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(KitError, match=problem):
        S.validate_submission(path, ids=["1", "2"], metric="logloss", clip=0.01)


def test_upload_needs_a_message_and_message_needs_upload(blended):
    with pytest.raises(KitError, match="--upload needs -m"):
        S.make_submission(blended, upload=True, competition="x")
    with pytest.raises(KitError, match="only used with --upload"):
        S.make_submission(blended, message="hi", competition="x")
    assert not Path("submissions").exists()


# --------------------------------------------------------------------------------------------------- CLI
def test_cli_submit_prints_the_path_last(blended):
    result = CliRunner().invoke(app, ["submit", "--name", "first.csv"])
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last == str(Path("submissions") / "first.csv") and Path(last).exists()
    again = CliRunner().invoke(app, ["submit", "--name", "first.csv"])
    assert again.exit_code != 0
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr


def test_cli_blend_then_submit_default_name(tmp_path, monkeypatch):
    write_experiment(tmp_path, exp="e1")
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["blend", "--exp", "e1"]).exit_code == 0
    result = CliRunner().invoke(app, ["submit", "--exp", "e1", "--clip", "0.01"])
    assert result.exit_code == 0, result.output
    last = Path(result.stdout.strip().splitlines()[-1])
    assert last.parent == Path("submissions") and last.name.startswith("e1-") and last.suffix == ".csv"
    assert "labels in [0.01, 0.99]" in result.stdout


def test_cli_submit_errors_are_one_line(blended):
    for args in (["submit", "--name", "../x.csv"], ["submit", "--clip", "0.7"], ["submit", "--exp", "none"],
                 ["submit", "--upload"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code != 0, args
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), args


def test_cli_submit_upload_with_fake_kaggle(blended, monkeypatch):
    api = FakeApi()
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=api))
    result = CliRunner().invoke(app, ["submit", "--name", "up.csv", "--upload", "-m", "first try",
                                      "--competition", "my-comp"])
    assert result.exit_code == 0, result.output
    assert api.submitted == [(str(Path("submissions") / "up.csv"), "first try", "my-comp")]
    assert result.stdout.strip().splitlines()[-1] == str(Path("submissions") / "up.csv")


def test_cli_submit_upload_failure_keeps_the_file(blended, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=FakeApi(fail=ApiException(403))))
    result = CliRunner().invoke(app, ["submit", "--name", "up.csv", "--upload", "-m", "m"])
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1
    assert "/rules" in result.stderr and "file is kept" in result.stderr
    assert Path("submissions/up.csv").exists()


# -------------------------------------------------------------------------------------- Kaggle API errors
class ApiException(Exception):
    """Like kaggle.rest.ApiException of kaggle < 1.7: the status is an attribute."""

    def __init__(self, status: int):
        super().__init__(f"({status})\nReason: whatever")
        self.status = status


class HTTPError(Exception):
    """Like requests.HTTPError raised by kaggle >= 1.7: the status sits on the response."""

    def __init__(self, status: int):
        super().__init__(f"{status} Client Error: for url: https://www.kaggle.com/api/v1/...")
        self.response = types.SimpleNamespace(status_code=status)


class FakeApi:
    def __init__(self, fail: Exception | None = None, archive: bytes | None = None):
        self.fail = fail
        self.archive = archive
        self.submitted = []

    def competition_submit(self, file_name, message, competition):
        if self.fail:
            raise self.fail
        self.submitted.append((file_name, message, competition))

    def competition_download_files(self, competition, path=None, quiet=True):
        if self.fail:
            raise self.fail
        Path(path, f"{competition}.zip").write_bytes(self.archive)


@pytest.mark.parametrize("exc", [ApiException(403), HTTPError(403), RuntimeError("403 Forbidden")])
def test_403_says_accept_the_rules_or_check_the_slug(exc):
    message = str(kaggle_api.explain_error(exc, competition="dogs-vs-cats", action="submitting"))
    assert "https://www.kaggle.com/c/dogs-vs-cats/rules" in message
    assert "misspelt" in message and "\n" not in message


@pytest.mark.parametrize("exc", [ApiException(404), HTTPError(404)])
def test_404_says_check_the_slug(exc):
    message = str(kaggle_api.explain_error(exc, competition="dogs-vs-kats", action="submitting"))
    assert "'dogs-vs-kats' not found" in message and "403" in message


def test_401_and_other_errors():
    assert "kaggle.json" in str(kaggle_api.explain_error(HTTPError(401), competition="c", action="a"))
    other = str(kaggle_api.explain_error(ConnectionError("no route\nmore"), competition="c", action="uploading"))
    assert other == "the Kaggle API failed while uploading (ConnectionError): no route"


def test_missing_package_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", None)  # makes 'import kaggle' fail as if not installed
    with pytest.raises(KitError, match="pip install kaggle"):
        kaggle_api.submit_file("x.csv", competition="c", message="m")


@pytest.mark.parametrize("init", [
    "raise OSError('Could not find kaggle.json. Make sure it is located in /root/.kaggle.')\n",
    "print('Could not find kaggle.json. Make sure it is located in /root/.kaggle.')\nexit(1)\n",
])
def test_missing_credentials_are_explained(tmp_path, monkeypatch, init):
    (tmp_path / "kaggle").mkdir()
    (tmp_path / "kaggle" / "__init__.py").write_text(init)
    monkeypatch.delitem(sys.modules, "kaggle", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KitError, match="KAGGLE_USERNAME and KAGGLE_KEY") as info:
        kaggle_api.download_competition(competition="c", dest=tmp_path / "data")
    assert "\n" not in str(info.value) and "Could not find kaggle.json" in str(info.value)


def test_submit_file_maps_http_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=FakeApi(fail=HTTPError(404))))
    with pytest.raises(KitError, match="'nope' not found"):
        kaggle_api.submit_file("x.csv", competition="nope", message="m")


# ---------------------------------------------------------------------------------------------- archives
def make_zip(members: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def test_traversal_member_refuses_the_archive(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"ok.txt": b"fine", "../evil": b"gotcha"}))
    dest = tmp_path / "dest"
    with pytest.raises(KitError, match=r"'\.\./evil'.*outside"):
        kaggle_api.extract_zip(archive, dest)
    assert not (tmp_path / "evil").exists() and not (dest / "ok.txt").exists()
    archive.write_bytes(make_zip({"/etc/passwd_kit": b"x"}))
    with pytest.raises(KitError, match="outside"):
        kaggle_api.extract_zip(archive, dest)


def test_symlink_members_are_skipped(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"train/cat.1.jpg": b"img"}, links={"train/link": "/etc/passwd"}))
    warnings = []
    written = kaggle_api.extract_zip(archive, tmp_path / "dest", warn=warnings.append)
    assert written == [(tmp_path / "dest" / "train" / "cat.1.jpg").resolve()]
    link = tmp_path / "dest" / "train" / "link"
    assert not link.exists() and not link.is_symlink()
    assert "symbolic link" in warnings[0]


def test_existing_link_inside_dest_cannot_be_used_to_escape(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "train").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"train/cat.1.jpg": b"img"}))
    with pytest.raises(KitError, match="outside"):
        kaggle_api.extract_zip(archive, dest)


def redux_archive() -> bytes:
    train = make_zip({"train/cat.0.jpg": b"c", "train/dog.0.jpg": b"d"})
    test = make_zip({"1.jpg": b"t1", "2.jpg": b"t2"})  # members not under test/: unpacked into test/ anyway
    return make_zip({"train.zip": train, "test.zip": test, "sample_submission.csv": b"id,label\n1,0.5\n2,0.5\n"})


def test_download_unpacks_the_redux_layout(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=FakeApi(archive=redux_archive())))
    dest = tmp_path / "data"
    kaggle_api.download_competition(competition="dogs-vs-cats-redux-kernels-edition", dest=dest)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert files == ["sample_submission.csv", "test", "test/1.jpg", "test/2.jpg", "train", "train/cat.0.jpg",
                     "train/dog.0.jpg"]


def test_download_refuses_an_existing_train_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=FakeApi(archive=redux_archive())))
    (tmp_path / "data" / "train").mkdir(parents=True)
    with pytest.raises(KitError, match="already exists"):
        kaggle_api.download_competition(competition="c", dest=tmp_path / "data")


def test_cli_download(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=FakeApi(archive=redux_archive())))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["download"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == "data"
    assert (tmp_path / "data" / "train" / "cat.0.jpg").exists()
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=FakeApi(fail=HTTPError(403))))
    failed = CliRunner().invoke(app, ["download", "--dest", "other", "--competition", "dogs-vs-kats"])
    assert failed.exit_code != 0 and failed.stderr.count("\n") == 1 and "dogs-vs-kats/rules" in failed.stderr
    assert not (tmp_path / "other" / ".download-dogs-vs-kats").exists()


@pytest.mark.parametrize("slug", ["../../x", "a/b", ""])
def test_slugs_that_could_escape_are_refused(tmp_path, monkeypatch, slug):
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=FakeApi(archive=redux_archive())))
    (tmp_path / "keep").mkdir()
    with pytest.raises(KitError, match="invalid competition name"):
        kaggle_api.download_competition(competition=slug, dest=tmp_path / "data")
    with pytest.raises(KitError, match="invalid competition name"):
        kaggle_api.submit_file("x.csv", competition=slug, message="m")
    assert (tmp_path / "keep").exists()
