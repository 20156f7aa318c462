"""Find a competition's images and labels on disk.

Two layouts are understood (JPEG, PNG, and anything else OpenCV decodes, by extension):

- Kaggle's: ``DIR/train/<class>.<n>.jpg`` (e.g. ``cat.1.jpg``, ``dog.1.jpg``) and ``DIR/test/<id>.jpg``;
- class folders: ``DIR/train/<class>/<anything>.jpg`` and the same ``DIR/test/``.

Label 1 is the positive class (``dog`` by default). Test ids come in numeric order, unless
``DIR/sample_submission.csv`` exists: then its ``id`` column gives the order, as Kaggle scores it.

Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints/``) are skipped silently; any other file that
cannot be used (not an image name, a name off the layout, a duplicate test id, a name that is not UTF-8) is
skipped with a line in ``Dataset.warnings``.

The result is a :class:`Dataset` whose order is fixed by the names alone (never by the order the file system
lists them), so a feature row always belongs to the same image.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kaggle_kit.artifacts import KitError, sha256_text

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_KAGGLE_TRAIN = re.compile(r"^(?P<cls>[A-Za-z][A-Za-z0-9_-]*)\.(?P<n>\d+)$")


@dataclass(frozen=True)
class Dataset:
    """A discovered competition: relative file paths, ids and labels in the kit's fixed row order.

    ``train_files``/``train_ids``/``y`` have one entry per training image (``y``: int8, shape (n_train,),
    1 = ``positive``); ``test_files``/``test_ids`` one per test image (ids as strings, as in the submission).
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


def _image_files(folder: Path, warnings: list[str], *, recursive: bool = False) -> list[Path]:
    entries = folder.rglob("*") if recursive else folder.iterdir()
    files = []
    for path in entries:
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # .DS_Store, and everything under a hidden folder such as .ipynb_checkpoints/
        if not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            warnings.append(f"ignored {path}: not an image file name (expected one of {sorted(IMAGE_EXTENSIONS)})")
            continue
        if not _is_utf8(path.relative_to(folder).as_posix()):
            # An id that is not text could not be written into the submission CSV.
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            warnings.append(f"ignored {shown}: its name is not valid UTF-8 (rename the file)")
            continue
        files.append(path)
    return files


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


def _read_sample_ids(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or header[0].strip().lower() != "id":
                raise KitError(f"{path}: first column must be 'id' (found header {header!r})", code=2)
            ids = [row[0].strip() for row in reader if row and row[0].strip()]
    except UnicodeDecodeError as exc:
        raise KitError(f"{path} is not a text CSV file ({exc.reason}); delete or fix it", code=2) from None
    except csv.Error as exc:
        raise KitError(f"{path} is not a valid CSV file ({exc}); delete or fix it", code=2) from None
    seen: set[str] = set()
    dupes = [i for i in ids if i in seen or seen.add(i)]
    if dupes:
        raise KitError(f"{path} lists id {dupes[0]!r} more than once ({len(dupes)} duplicates)", code=2)
    return ids


def _discover_test(root: Path, warnings: list[str]) -> tuple[list[str], list[str], bool]:
    test = root / "test"
    if not test.is_dir():
        raise KitError(f"no test folder {test}: expected {root}/test/<id>.jpg; pass --data DIR", code=2)
    by_id: dict[str, Path] = {}
    for path in sorted(_image_files(test, warnings, recursive=True), key=lambda p: p.as_posix()):
        rel_id = path.relative_to(test).with_suffix("").as_posix()
        if rel_id in by_id:
            warnings.append(f"ignored {path}: duplicate test id {rel_id!r} (kept {by_id[rel_id]})")
            continue
        by_id[rel_id] = path
    sample = root / "sample_submission.csv"
    if sample.is_file():
        ids = _read_sample_ids(sample)
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KitError(
                f"{sample} lists {len(missing)} id(s) with no image in {test} (first: {missing[0]!r}); "
                "the submission could not be complete",
                code=2,
            )
        extra = sorted(set(by_id) - set(ids), key=_numeric_key)
        for i in extra:
            warnings.append(f"ignored {by_id[i]}: id {i!r} is not in {sample.name}")
        has_sample = True
    else:
        ids = sorted(by_id, key=_numeric_key)
        has_sample = False
    return ids, [by_id[i].relative_to(root).as_posix() for i in ids], has_sample


def discover(data_dir: Path | str, *, positive: str = "dog") -> Dataset:
    """Discover a competition folder. Raises :class:`KitError` (code 2) when it cannot be used."""
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise KitError(f"data folder {data_dir} does not exist; pass --data DIR", code=2)
    warnings: list[str] = []
    layout, items = _discover_train(root, warnings)
    if not items:
        raise KitError(f"no training images found in {root / 'train'}", code=2)
    classes = sorted({c for c, _, _ in items})
    if len(classes) != 2:
        what = f"only class {classes[0]!r}" if len(classes) == 1 else f"{len(classes)} classes {classes}"
        raise KitError(f"{root / 'train'} has {what}; a binary competition needs exactly two", code=2)
    if positive not in classes:
        raise KitError(f"positive class {positive!r} is not among the classes {classes}; pass --positive", code=2)
    negative = classes[0] if classes[1] == positive else classes[1]
    items.sort(key=lambda t: (t[0] != negative, *_numeric_key(t[1].rsplit(".", 1)[-1]), t[1], t[2]))
    test_ids, test_files, has_sample = _discover_test(root, warnings)
    if not test_ids:
        raise KitError(f"no test images found in {root / 'test'}", code=2)
    y = np.array([c == positive for c, _, _ in items], dtype=np.int8)
    return Dataset(
        root=root,
        layout=layout,
        classes=(negative, positive),
        positive=positive,
        train_files=tuple(f for _, _, f in items),
        train_ids=tuple(i for _, i, _ in items),
        y=y,
        test_files=tuple(test_files),
        test_ids=tuple(test_ids),
        has_sample_submission=has_sample,
        warnings=tuple(warnings),
    )
