"""Find a competition's images and labels on disk.

Three layouts are understood (JPEG, PNG, TIFF and anything else OpenCV decodes, by extension):

- ``kaggle`` (Dogs vs. Cats Redux): ``DIR/train/<class>.<n>.jpg`` (e.g. ``cat.1.jpg``) and ``DIR/test/<id>.jpg``;
- ``folders``: ``DIR/train/<class>/<anything>.jpg`` and the same ``DIR/test/``;
- ``csv``: a labels CSV (``DIR/train.csv`` or ``DIR/train_labels.csv``, or any file given as ``labels``) with an
  id column and a binary target column, images at ``DIR/train/<id>`` with or without an extension (ids that
  carry one work too; nested folders allowed), test images in ``DIR/test/`` (Aerial Cactus, Histopathologic
  Cancer Detection, SIIM-ISIC Melanoma). The id column is the sample submission's id column when the labels
  have it, else the only column naming training images; the target column the sample submission's prediction
  column, else the only other column holding two values. Targets are 0/1, or two class names with ``positive``.

The layout is the csv one when a labels file exists (or is given), else ``folders`` when ``train/`` holds
folders, else ``kaggle``. In the name and folder layouts label 1 is the ``positive`` class (``dog`` by default).

Test ids come in numeric order, unless ``DIR/sample_submission.csv`` exists: then its first column gives the
ids and their order, as Kaggle scores them, and the submission copies its header. A sample-submission id
without a test image is kept (the submission gives it the training prior) and warned about; a test image not
in the sample submission is warned about and left out.

Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints/``) are skipped silently; any other file that
cannot be used (not an image name, a name off the layout, a duplicate test id, a name that is not UTF-8, a
label row without an image, an image without a label row) is skipped with a line in ``Dataset.warnings``.
What cannot be repaired by skipping (duplicate ids, a target that is not binary, a missing column, nothing
left) stops with a one-line :class:`KitError`.

The result is a :class:`Dataset` whose order is fixed by the names (and the labels file's row order) alone,
never by the order the file system lists them, so a feature row always belongs to the same image.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kaggle_kit.artifacts import KitError, sha256_text

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
LAYOUTS = ("kaggle", "folders", "csv")
LABELS_FILES = ("train.csv", "train_labels.csv")
SAMPLE_SUBMISSION = "sample_submission.csv"
DEFAULT_HEADER = ("id", "label")
DEFAULT_POSITIVE = "dog"
TARGET_NAMES = ("target", "label", "class", "y")  # preferred when several columns hold two values
# The settings besides the folder that say how to read it; the experiment remembers them (kaggle_kit.store).
DATA_OPTIONS = ("positive", "layout", "labels", "id_col", "target_col")
_KAGGLE_TRAIN = re.compile(r"^(?P<cls>[A-Za-z][A-Za-z0-9_-]*)\.(?P<n>\d+)$")


@dataclass(frozen=True)
class Dataset:
    """A discovered competition: relative file paths, ids and labels in the kit's fixed row order.

    ``train_files``/``train_ids``/``y`` have one entry per training image (``y``: int8, shape (n_train,),
    1 = ``positive``); ``test_files``/``test_ids`` one per test image (ids as strings, as in the submission).
    The submission is ``submission_header`` (the sample submission's, else ``id,label``) over
    ``submission_ids``: the test ids plus, in the sample submission's order, ``missing_test_ids`` (ids without
    a test image, predicted with the training prior). ``labels_file``, ``id_col``, ``target_col``: the csv
    layout's labels and the columns read (None in the other layouts).
    """

    root: Path
    layout: str
    classes: tuple[str, str]
    positive: str
    train_files: tuple[str, ...]
    train_ids: tuple[str, ...]
    y: np.ndarray
    test_files: tuple[str, ...]
    test_ids: tuple[str, ...]
    has_sample_submission: bool
    warnings: tuple[str, ...] = field(default=())
    submission_header: tuple[str, str] = DEFAULT_HEADER
    submission_ids: tuple[str, ...] = ()
    missing_test_ids: tuple[str, ...] = ()
    labels_file: str | None = None
    id_col: str | None = None
    target_col: str | None = None

    @property
    def n_train(self) -> int:
        return len(self.train_files)

    @property
    def n_test(self) -> int:
        return len(self.test_files)

    def train_paths(self) -> list[Path]:
        return [self.root / f for f in self.train_files]

    def test_paths(self) -> list[Path]:
        return [self.root / f for f in self.test_files]

    def image_list_hash(self) -> str:
        """Hash of every image's relative name, size and mtime plus the labels: changes when any file does."""
        lines = [f"positive\t{self.positive}"]
        for split, files in (("train", self.train_files), ("test", self.test_files)):
            for rel in files:
                st = (self.root / rel).stat()
                lines.append(f"{split}\t{rel}\t{st.st_size}\t{st.st_mtime_ns}")
        lines.append("y\t" + "".join(map(str, self.y.tolist())))
        return sha256_text("\n".join(lines))


def _numeric_key(text: str) -> tuple:
    """Sort key putting '2' before '10' and numbers before other names."""
    # subtle: isdigit() is also true for '²', which int() refuses; isdecimal() is exactly what int() reads.
    return (0, int(text), text) if text.isdecimal() else (1, 0, text)


def _is_utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _walk(folder: Path, warnings: list[str], *, recursive: bool = False) -> list[str]:
    """The image files in ``folder`` (and its subfolders with ``recursive``) as relative '/'-separated paths,
    in no particular order. Hidden files and folders are skipped silently; other files that cannot be used
    (not an image name, a name that is not UTF-8) are skipped with a warning.

    subtle: os.scandir with plain strings, not pathlib: pathlib costs ten times more per file, which is most of
    a minute on the 277,000 images of Histopathologic Cancer Detection, and every stage discovers the data.
    """
    found: list[str] = []
    pending = [("", os.fspath(folder))]
    while pending:
        prefix, where = pending.pop()
        with os.scandir(where) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # .DS_Store, and everything under a hidden folder such as .ipynb_checkpoints/
                rel = prefix + entry.name
                if recursive and entry.is_dir(follow_symlinks=False):
                    pending.append((rel + "/", entry.path))
                    continue
                if not entry.is_file():
                    continue
                if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                    warnings.append(f"ignored {entry.path}: not an image file name (expected one of "
                                    f"{sorted(IMAGE_EXTENSIONS)})")
                    continue
                if not _is_utf8(rel):
                    # An id that is not text could not be written into the submission CSV.
                    shown = os.fsencode(entry.path).decode("utf-8", "backslashreplace")
                    warnings.append(f"ignored {shown}: its name is not valid UTF-8 (rename the file)")
                    continue
                found.append(rel)
    return found


def _image_files(folder: Path, warnings: list[str], *, recursive: bool = False) -> list[Path]:
    return [folder / rel for rel in _walk(folder, warnings, recursive=recursive)]


def _discover_train(root: Path, warnings: list[str]) -> tuple[str, list[tuple[str, str, str]]]:
    """Return the layout name and (class, id, relative file) triples of the training images."""
    train = root / "train"
    if not train.is_dir():
        raise KitError(
            f"no training folder {train}: expected {root}/train/<class>.<n>.jpg (Kaggle layout) or "
            f"{root}/train/<class>/*.jpg; pass --data DIR (or run 'kaggle-kit download')",
            code=2,
        )
    subdirs = sorted(p for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    items: list[tuple[str, str, str]] = []
    if subdirs:
        for sub in subdirs:
            for path in _image_files(sub, warnings, recursive=True):
                rel = path.relative_to(root).as_posix()
                items.append((sub.name, path.relative_to(train).with_suffix("").as_posix(), rel))
        # Loose files beside class folders are not labelled by anything: say so.
        for path in train.iterdir():
            if path.is_file() and not path.name.startswith("."):
                warnings.append(f"ignored {path}: in the class-folder layout images belong in train/<class>/")
        return "folders", items
    for path in _image_files(train, warnings):
        m = _KAGGLE_TRAIN.match(path.stem)
        if not m:
            warnings.append(f"ignored {path}: name does not match <class>.<n>.<ext> (e.g. cat.1.jpg)")
            continue
        items.append((m["cls"].lower(), path.stem, path.relative_to(root).as_posix()))
    return "kaggle", items


# ------------------------------------------------------------------------------------------ the CSV layout
class _ImageIndex:
    """The image files under one folder, found by the names a CSV may give them.

    An id names a file by, most specific first: its path under the folder (``sub/a.jpg``), that path without
    the extension (``sub/a``), its file name (``a.jpg``) or its file name without the extension (``a``); a
    leading ``<folder>/`` is allowed (``train/a.jpg``). The first of these that matches anything decides.
    """

    def __init__(self, folder: Path, root: Path, warnings: list[str]):
        self.folder = folder
        self.files: list[str] = []  # relative to root, sorted
        self._levels: tuple[dict[str, list[str]], ...] = ({}, {}, {}, {})
        base = folder.relative_to(root).as_posix()
        for inner in sorted(_walk(folder, warnings, recursive=True)):
            rel = f"{base}/{inner}"
            self.files.append(rel)
            head, _, name = inner.rpartition("/")
            stem = os.path.splitext(name)[0]
            for level, key in zip(self._levels, (inner, f"{head}/{stem}" if head else stem, name, stem)):
                level.setdefault(key, []).append(rel)

    def lookup(self, image_id: str) -> list[str]:
        """The files ``image_id`` names (relative to root, sorted): none, one, or several (ambiguous)."""
        prefix = f"{self.folder.name}/"
        keys = [image_id] + ([image_id[len(prefix):]] if image_id.startswith(prefix) else [])
        for level in self._levels:
            for key in keys:
                if key in level:
                    return level[key]
        return []


def _first(items: Sequence[str], k: int = 5) -> str:
    """The first ``k`` items, quoted (so that odd characters cannot break the one-line message)."""
    return ", ".join(repr(i) for i in items[:k]) + (", ..." if len(items) > k else "")


def _read_csv(path: Path, what: str):
    """A CSV as a pandas DataFrame of stripped strings (empty cells as ''), or a one-line KitError."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except FileNotFoundError:
        raise KitError(f"{what} {path} does not exist", code=2) from None
    except (ValueError, OSError) as exc:  # parser, empty-data and decoding errors are ValueErrors
        raise KitError(f"{what} {path} is not a readable CSV file ({' '.join(str(exc).split())}); fix or replace "
                       "it", code=2) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.apply(lambda col: col.str.strip())


@dataclass(frozen=True)
class SampleSubmission:
    """``sample_submission.csv``: its header (id column, prediction column) and its ids, in order."""

    header: tuple[str, str]
    ids: tuple[str, ...]


def read_sample_submission(path: Path) -> SampleSubmission:
    """Read a sample submission: exactly two columns (the id, then the prediction); ids non-empty, each once."""
    frame = _read_csv(path, "sample submission")
    columns = list(frame.columns)
    if len(columns) != 2 or not all(columns):
        raise KitError(f"{path} has the header {','.join(columns)!r}; a binary competition's sample submission "
                       "has two columns, the id and the prediction (e.g. 'id,label')", code=2)
    ids = [i for i in frame[columns[0]].tolist() if i]
    seen: set[str] = set()
    dupes = [i for i in ids if i in seen or seen.add(i)]
    if dupes:
        raise KitError(f"{path} lists id {dupes[0]!r} more than once ({len(dupes)} duplicates)", code=2)
    return SampleSubmission(header=(columns[0], columns[1]), ids=tuple(ids))


def find_labels_file(root: Path, labels: Path | str | None) -> Path | None:
    """The labels CSV: ``labels`` (as given, else inside ``root``), else ``root/train.csv`` or
    ``root/train_labels.csv``; None when there is none."""
    if labels is not None:
        given = Path(labels).expanduser()
        for candidate in (given, root / given):
            if candidate.is_file():
                return candidate.resolve()
        raise KitError(f"labels file {labels} does not exist (looked in . and {root}); pass --labels FILE", code=2)
    found = [root / name for name in LABELS_FILES if (root / name).is_file()]
    if len(found) > 1:
        raise KitError(f"{root} holds both {' and '.join(p.name for p in found)}; pass --labels FILE to say which "
                       "one labels the training images", code=2)
    return found[0] if found else None


def _pick_id_column(frame, path: Path, index: _ImageIndex, id_col: str | None, sample_header) -> str:
    columns = list(frame.columns)
    listed = ", ".join(repr(c) for c in columns)
    if id_col is not None:
        if id_col not in columns:
            raise KitError(f"{path} has no column {id_col!r} (columns: {listed}); pass --id-col with one of them",
                           code=2)
        return id_col
    if sample_header and sample_header[0] in columns:
        return sample_header[0]  # the sample submission's id column, as Kaggle's competitions name it
    naming = [c for c in columns if any(index.lookup(v) for v in frame[c].tolist() if v)]
    if len(naming) == 1:
        return naming[0]
    if not naming:
        raise KitError(f"no column of {path} names the images in {index.folder} (columns: {listed}); pass "
                       "--id-col COLUMN", code=2)
    raise KitError(f"cannot tell the id column of {path}: {', '.join(repr(c) for c in naming)} all name images "
                   f"in {index.folder}; pass --id-col COLUMN", code=2)


def _pick_target_column(frame, path: Path, id_col: str, target_col: str | None, sample_header) -> str:
    columns = list(frame.columns)
    listed = ", ".join(repr(c) for c in columns)
    if target_col is not None:
        if target_col not in columns:
            raise KitError(f"{path} has no column {target_col!r} (columns: {listed}); pass --target-col with one "
                           "of them", code=2)
        if target_col == id_col:
            raise KitError(f"--target-col {target_col!r} is also the id column of {path}; pass another", code=2)
        return target_col
    if sample_header and sample_header[1] in columns and sample_header[1] != id_col:
        return sample_header[1]  # the column the submission predicts
    others = [c for c in columns if c != id_col]
    binary = [c for c in others if len({v for v in frame[c].tolist() if v}) == 2]
    named = [c for c in binary if c.lower() in TARGET_NAMES]
    if len(binary) == 1 or len(named) == 1:
        return binary[0] if len(binary) == 1 else named[0]
    what = (f"no column besides the id {id_col!r} holds two values" if not binary
            else f"{', '.join(repr(c) for c in binary)} all hold two values")
    raise KitError(f"cannot tell the target column of {path} (columns: {listed}): {what}; pass --target-col "
                   "COLUMN", code=2)


def _binary_labels(values: list[str], *, path: Path, column: str, positive: str | None,
                   ids: list[str]) -> tuple[np.ndarray, tuple[str, str]]:
    """(n,) int8 labels and (negative, positive) class names of a target column's values."""
    empty = [i for i, v in zip(ids, values) if not v]
    if empty:
        raise KitError(f"{len(empty)} rows of {path} have no {column!r} (ids {_first(empty)}); give every row a "
                       "target or delete the row", code=2)
    distinct = sorted(set(values))
    if len(distinct) != 2:
        what = (f"only the value {distinct[0]!r}" if len(distinct) == 1
                else f"{len(distinct)} values ({_first(distinct)})")
        raise KitError(f"column {column!r} of {path} holds {what}; a binary competition needs two classes (pass "
                       "--target-col for another column)", code=2)
    numeric = _as_zero_one(distinct)
    if numeric is not None:  # 0/1 (or 0.0/1.0, ...): 1 is positive unless --positive names the 0 value
        zero, one = numeric
        if positive is None or positive in (one, "1"):
            return np.array([v == one for v in values], dtype=np.int8), ("0", "1")
        if positive in (zero, "0"):
            return np.array([v == zero for v in values], dtype=np.int8), ("1", "0")
        raise KitError(f"positive class {positive!r} is not among the values ('0', '1') of column {column!r} of "
                       f"{path}; pass --positive 1 (or leave it out)", code=2)
    if positive is None:
        raise KitError(f"column {column!r} of {path} holds the class names {distinct[0]!r} and {distinct[1]!r}; "
                       "pass --positive with the one whose label is 1", code=2)
    if positive not in distinct:
        raise KitError(f"positive class {positive!r} is not among the classes {distinct} of column {column!r} of "
                       f"{path}; pass --positive", code=2)
    negative = distinct[0] if distinct[1] == positive else distinct[1]
    return np.array([v == positive for v in values], dtype=np.int8), (negative, positive)


def _as_zero_one(distinct: list[str]) -> tuple[str, str] | None:
    """The (zero, one) spellings when two values read as the numbers 0 and 1 ('0'/'1', '0.0'/'1.0'), else None."""
    try:
        numbers = [float(v) for v in distinct]
    except ValueError:
        return None
    if sorted(numbers) != [0.0, 1.0]:
        return None
    return (distinct[0], distinct[1]) if numbers[0] == 0.0 else (distinct[1], distinct[0])


def _discover_csv_train(root: Path, labels_path: Path, warnings: list[str], *, id_col: str | None,
                        target_col: str | None, positive: str | None, sample_header) -> dict:
    train = root / "train"
    if not train.is_dir():
        raise KitError(f"no training folder {train}: the labels in {labels_path} name images in {root}/train/; "
                       "pass --data DIR", code=2)
    index = _ImageIndex(train, root, warnings)
    frame = _read_csv(labels_path, "labels file")
    if frame.empty:
        raise KitError(f"{labels_path} has no rows", code=2)
    id_col = _pick_id_column(frame, labels_path, index, id_col, sample_header)
    target_col = _pick_target_column(frame, labels_path, id_col, target_col, sample_header)
    ids = frame[id_col].tolist()
    blank = sum(not i for i in ids)
    if blank:
        raise KitError(f"{blank} rows of {labels_path} have an empty {id_col!r}; give every row an id", code=2)
    seen: set[str] = set()
    dupes = [i for i in ids if i in seen or seen.add(i)]
    if dupes:
        raise KitError(f"{labels_path} lists id {dupes[0]!r} more than once ({len(dupes)} duplicate rows); keep "
                       "one row per image", code=2)
    y, classes = _binary_labels(frame[target_col].tolist(), path=labels_path, column=target_col,
                                positive=positive, ids=ids)
    rows, files, no_image, by_file = [], [], [], {}
    for row, image_id in enumerate(ids):
        found = index.lookup(image_id)
        if not found:
            no_image.append(image_id)
            continue
        if len(found) > 1:
            warnings.append(f"id {image_id!r} of {labels_path.name} names {len(found)} images ({_first(found)}); "
                            f"used {found[0]!r}")
        if found[0] in by_file:
            raise KitError(f"ids {by_file[found[0]]!r} and {image_id!r} of {labels_path} both name the image "
                           f"{found[0]!r}; keep one row per image", code=2)
        by_file[found[0]] = image_id
        rows.append(row)
        files.append(found[0])
    if no_image:
        if not rows:
            raise KitError(f"none of the {len(ids)} ids in column {id_col!r} of {labels_path} names an image in "
                           f"{train} (first: {_first(no_image, 3)}); check --data, or pass --id-col", code=2)
        warnings.append(f"{len(no_image)} of {len(ids)} rows of {labels_path.name} have no image in {train} "
                        f"(ids {_first(no_image)}); they are left out")
    unlabelled = [f for f in index.files if f not in by_file]
    if unlabelled:
        warnings.append(f"{len(unlabelled)} images in {train} have no row in {labels_path.name} "
                        f"({_first(unlabelled)}); they are ignored")
    y = y[rows]
    if len(np.unique(y)) < 2:
        raise KitError(f"the {len(rows)} labelled training images with an image in {train} are all of class "
                       f"{classes[int(y[0])]!r}; a binary competition needs both", code=2)
    return {"files": files, "ids": [ids[r] for r in rows], "y": y, "classes": classes, "id_col": id_col,
            "target_col": target_col, "positive": classes[1]}


# ---------------------------------------------------------------------------------------------- test side
@dataclass(frozen=True)
class _TestSide:
    ids: list[str]
    files: list[str]
    header: tuple[str, str]
    submission_ids: list[str]
    missing: list[str]
    has_sample: bool


def _discover_test(root: Path, warnings: list[str], sample: SampleSubmission | None) -> _TestSide:
    """Test ids and files: in the sample submission's order when there is one, else every test image in
    numeric order of its path without the extension."""
    test = root / "test"
    if not test.is_dir():
        raise KitError(f"no test folder {test}: expected {root}/test/<id>.jpg; pass --data DIR", code=2)
    if sample is None:
        by_id: dict[str, str] = {}
        for inner in sorted(_walk(test, warnings, recursive=True)):
            rel_id = os.path.splitext(inner)[0]
            if rel_id in by_id:
                warnings.append(f"ignored {test / inner}: duplicate test id {rel_id!r} (kept {root / by_id[rel_id]})")
                continue
            by_id[rel_id] = f"test/{inner}"
        ids = sorted(by_id, key=_numeric_key)
        return _TestSide(ids=ids, files=[by_id[i] for i in ids], header=DEFAULT_HEADER, submission_ids=ids,
                         missing=[], has_sample=False)
    index = _ImageIndex(test, root, warnings)
    ids, files, missing, used = [], [], [], set()
    for image_id in sample.ids:
        found = index.lookup(image_id)
        if not found:
            missing.append(image_id)
            continue
        if len(found) > 1:
            warnings.append(f"sample submission id {image_id!r} names {len(found)} test images ({_first(found)}); "
                            f"used {found[0]!r}")
        if found[0] in used:
            raise KitError(f"two ids of {root / SAMPLE_SUBMISSION} name the test image {found[0]!r} (the second: "
                           f"{image_id!r}); keep one row per image", code=2)
        used.add(found[0])
        ids.append(image_id)
        files.append(found[0])
    if missing:
        if not ids:
            raise KitError(f"none of the {len(sample.ids)} ids of {root / SAMPLE_SUBMISSION} names an image in {test} "
                           f"(first: {_first(missing, 3)}); check --data", code=2)
        warnings.append(f"{len(missing)} of {len(sample.ids)} ids of {SAMPLE_SUBMISSION} have no image in {test} "
                        f"(ids {_first(missing)}); the submission gives them the training prior")
    extra = [f for f in index.files if f not in used]
    if extra:
        warnings.append(f"{len(extra)} images in {test} are not in {SAMPLE_SUBMISSION} ({_first(extra)}); they are "
                        "left out of the submission")
    return _TestSide(ids=ids, files=files, header=sample.header, submission_ids=list(sample.ids), missing=missing,
                     has_sample=True)


# ---------------------------------------------------------------------------------------------- discovery
def discover(data_dir: Path | str, *, positive: str | None = None, layout: str | None = None,
             labels: Path | str | None = None, id_col: str | None = None,
             target_col: str | None = None) -> Dataset:
    """Discover a competition folder. Raises :class:`KitError` (code 2) when it cannot be used.

    ``layout`` None detects it (see the module docstring); ``positive`` None is 'dog' in the name and folder
    layouts and '1' for a 0/1 target; ``labels``, ``id_col``, ``target_col`` are for the CSV layout (inferred
    when None).
    """
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise KitError(f"data folder {data_dir} does not exist; pass --data DIR", code=2)
    if layout is not None and layout not in LAYOUTS:
        raise KitError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}", code=2)
    if layout in ("kaggle", "folders") and (labels is not None or id_col is not None or target_col is not None):
        raise KitError(f"--labels, --id-col and --target-col belong to the csv layout, not {layout!r}", code=2)
    warnings: list[str] = []
    sample_path = root / SAMPLE_SUBMISSION
    sample = read_sample_submission(sample_path) if sample_path.is_file() else None
    labels_path = None if layout in ("kaggle", "folders") else find_labels_file(root, labels)
    if layout == "csv" and labels_path is None:
        raise KitError(f"the csv layout needs a labels file: {root} holds neither {' nor '.join(LABELS_FILES)}; "
                       "pass --labels FILE", code=2)
    if labels_path is None and (id_col is not None or target_col is not None):
        raise KitError(f"--id-col and --target-col name columns of a labels CSV, but {root} holds neither "
                       f"{' nor '.join(LABELS_FILES)}; pass --labels FILE", code=2)
    if labels_path is not None:
        found = _discover_csv_train(root, labels_path, warnings, id_col=id_col, target_col=target_col,
                                    positive=positive, sample_header=sample.header if sample else None)
        train_files, train_ids, y = found["files"], found["ids"], found["y"]
        classes, positive = found["classes"], found["positive"]
        found_layout = "csv"
    else:
        positive = DEFAULT_POSITIVE if positive is None else positive
        found_layout, items = _discover_train(root, warnings)
        if layout is not None and layout != found_layout:
            raise KitError(f"{root / 'train'} is in the {found_layout!r} layout, not {layout!r} (the experiment's); "
                           "pass --layout to change it", code=2)
        if not items:
            raise KitError(f"no training images found in {root / 'train'}", code=2)
        names = sorted({c for c, _, _ in items})
        if len(names) != 2:
            what = f"only class {names[0]!r}" if len(names) == 1 else f"{len(names)} classes {names}"
            raise KitError(f"{root / 'train'} has {what}; a binary competition needs exactly two (for images "
                           "labelled by a CSV file, pass --labels FILE)", code=2)
        if positive not in names:
            raise KitError(f"positive class {positive!r} is not among the classes {names}; pass --positive", code=2)
        negative = names[0] if names[1] == positive else names[1]
        items.sort(key=lambda t: (t[0] != negative, *_numeric_key(t[1].rsplit(".", 1)[-1]), t[1], t[2]))
        classes = (negative, positive)
        train_files, train_ids = [f for _, _, f in items], [i for _, i, _ in items]
        y = np.array([c == positive for c, _, _ in items], dtype=np.int8)
    side = _discover_test(root, warnings, sample)
    if not side.ids:
        raise KitError(f"no test images found in {root / 'test'}", code=2)
    return Dataset(
        root=root,
        layout=found_layout,
        classes=classes,
        positive=positive,
        train_files=tuple(train_files),
        train_ids=tuple(train_ids),
        y=y,
        test_files=tuple(side.files),
        test_ids=tuple(side.ids),
        has_sample_submission=side.has_sample,
        warnings=tuple(warnings),
        submission_header=side.header,
        submission_ids=tuple(side.submission_ids),
        missing_test_ids=tuple(side.missing),
        labels_file=str(labels_path) if labels_path is not None else None,
        id_col=found["id_col"] if labels_path is not None else None,
        target_col=found["target_col"] if labels_path is not None else None,
    )


def discover_remembered(remembered) -> Dataset:
    """Discover the data folder as settings say: anything with ``data_dir`` and the :data:`DATA_OPTIONS` as
    attributes (``kaggle_kit.store.Experiment``, what ``experiment.json`` remembers, or
    ``kaggle_kit.store.DataSettings``)."""
    return discover(remembered.data_dir, **{key: getattr(remembered, key) for key in DATA_OPTIONS})
