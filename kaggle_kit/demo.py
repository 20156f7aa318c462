"""``kaggle-kit demo``: the whole pipeline, features -> cv -> blend -> submit, on a sample competition.

Where the images come from:

- ``--data DIR``: the user's competition folder, as every other command reads it;
- otherwise the public ``cats_and_dogs_filtered`` sample (2,000 training + 1,000 validation photos of the
  original Dogs vs. Cats), downloaded once into a cache folder and arranged in Kaggle's layout: the training
  photos become ``train/cat.<n>.jpg`` / ``train/dog.<n>.jpg``, the validation photos ``test/<id>.jpg``
  (shuffled with a fixed seed), with ``sample_submission.csv`` and the answer key ``test_labels.csv``;
- when that download is impossible (no network), a small synthetic competition made on the spot: a SMOKE
  RUN that shows the pipeline works, not how well it scores on photos.

The stages are the ones behind the ``kaggle-kit`` commands (:func:`kaggle_kit.features.run_features`,
:func:`kaggle_kit.cv.run_cv`, :func:`kaggle_kit.blend.run_blend`, :func:`kaggle_kit.submit.make_submission`),
caches included; before each, the demo prints the command line that does the same. A competition
folder holding ``test_labels.csv`` (``id,label``, label 1 = the positive class) is an answer key: the demo
then also scores the submission against it (log loss, accuracy and AUC; any two-column header such as
``id,has_cactus``), which Kaggle's real test set never allows.

Cache layout (``~/.cache/kaggle-kit/`` unless ``--cache DIR``)::

    cats_and_dogs_filtered/     the arranged sample; its manifest.json is written last (finished marker)
    synthetic/                  the synthetic competition of the smoke run, same convention
"""

from __future__ import annotations

import http.client
import shlex
import shutil
import time
import urllib.error
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from kaggle_kit.artifacts import (
    KitError,
    atomic_path,
    check_name,
    new_manifest,
    read_manifest,
    write_json_atomic,
)
from kaggle_kit.store import DEFAULT_POOL
from kaggle_kit.views import DEFAULT_VIEW_KIND

CATS_AND_DOGS_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
CATS_AND_DOGS = "cats_and_dogs_filtered"
SYNTHETIC = "synthetic"
DEFAULT_CACHE = Path("~/.cache/kaggle-kit")
DEFAULT_FOLDS = 5
DOWNLOAD_TIMEOUT = 15.0  # seconds without a byte from the server before the download is given up
ANSWER_KEY = "test_labels.csv"
DATA_FORMAT = "kaggle-kit/demo-data/1"
# The archive's class folders and the Kaggle class names they become (label 1 = dog, as in the competition).
CLASS_FOLDERS = {"cats": "cat", "dogs": "dog"}
NEGATIVE, POSITIVE = "cat", "dog"
# Synthetic images are ambiguous in places, so that the smoke run's ladder has something to show: this share
# of them is drawn in the other class's colours, and of their objects this share has the other class's shape.
SWAPPED_PALETTE = 0.3
SWAPPED_SHAPE = 0.35
SYNTHETIC_VERSION = 1  # part of a cached synthetic competition's identity: bump it when the drawing changes


# ------------------------------------------------------------------------------ the synthetic competition
def synthetic_photo(rng: np.random.Generator, *, positive: bool, height: int, width: int) -> np.ndarray:
    """One photo-like BGR uint8 image (height, width, 3) of a class that differs visibly from the other.

    Negative ('cat'): a texture of soft spots, mostly round blobs, mostly a warm orange palette. Positive
    ('dog'): a texture of stripes, mostly rectangular boxes, mostly a cool blue palette. "Mostly": see
    ``SWAPPED_PALETTE`` and ``SWAPPED_SHAPE``; the texture, of random strength, is the only cue that never
    lies. Each image draws its own shades, orientation, texture scale, objects and sensor noise from ``rng``:
    no two are alike, and ImageNet features, not pixel equality, separate the classes.
    """
    import cv2

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / np.hypot(height, width)  # in [-1, 1]
    blue = positive != (rng.random() < SWAPPED_PALETTE)
    hue = rng.uniform(100, 120) if blue else rng.uniform(8, 22)  # OpenCV hue (0-180): blue vs orange
    sat = rng.uniform(110, 210)
    val = rng.uniform(130, 210) * (0.8 + 0.2 * ramp)
    if positive:
        theta, period = rng.uniform(0, np.pi), rng.uniform(7, 16)
        texture = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    else:
        texture = np.zeros((height, width), np.float32)
        for _ in range(height * width // 500):
            center = (int(rng.integers(width)), int(rng.integers(height)))
            cv2.circle(texture, center, int(rng.integers(2, 7)), 1.0, thickness=-1, lineType=cv2.LINE_AA)
        texture = cv2.GaussianBlur(texture, (0, 0), 1.5)
    val = val * (1.0 - rng.uniform(0.0, 0.3) * np.clip(texture, 0, 1))  # near 0: the texture all but vanishes
    hsv = np.stack([np.full_like(val, hue), np.full_like(val, sat), val], axis=-1)
    image = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
    for _ in range(int(rng.integers(2, 5))):
        shade = (hue + rng.uniform(-10, 10), rng.uniform(120, 255), rng.uniform(60, 255))
        bgr = cv2.cvtColor(np.uint8([[np.clip(shade, 0, 255)]]), cv2.COLOR_HSV2BGR)[0, 0].tolist()
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
        a, b = rng.uniform(0.06, 0.2) * width, rng.uniform(0.06, 0.2) * height
        if positive != (rng.random() < SWAPPED_SHAPE):
            box = cv2.boxPoints(((cx, cy), (2 * a, 2 * b), rng.uniform(0, 90)))
            cv2.fillPoly(image, [np.round(box).astype(np.int32)], bgr, lineType=cv2.LINE_AA)
        else:
            cv2.ellipse(image, ((cx, cy), (2 * a, 2 * b), rng.uniform(0, 180)), bgr, thickness=-1,
                        lineType=cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), 0.8).astype(np.float32)
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    import cv2

    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise KitError(f"OpenCV could not encode {path} as JPEG")
    path.write_bytes(encoded.tobytes())


def _write_csvs(dest: Path, test_labels: Sequence[int]) -> None:
    """``sample_submission.csv`` (ids 1..n, label 0.5) and the answer key ``test_labels.csv`` (label 1 = dog)."""
    ids = range(1, len(test_labels) + 1)
    (dest / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0.5\n" for i in ids))
    (dest / ANSWER_KEY).write_text("id,label\n" + "".join(f"{i},{y}\n" for i, y in zip(ids, test_labels)))


def make_synthetic_competition(dest: Path, *, n_per_class: int = 120, n_test: int = 80, seed: int = 0) -> Path:
    """Write a synthetic binary competition into ``dest`` (which must not exist) in Kaggle's layout.

    ``train/cat.<n>.jpg`` and ``train/dog.<n>.jpg`` (``n_per_class`` each), ``test/<id>.jpg`` for ids
    1..``n_test`` (half of each class, rounded down for dogs, in shuffled order), ``sample_submission.csv``
    and ``test_labels.csv``. Images are 200-400 px JPEGs from :func:`synthetic_photo`; everything is a
    function of ``seed``.
    """
    if n_per_class < 1 or n_test < 1:
        raise ValueError(f"n_per_class and n_test must be at least 1, got {n_per_class} and {n_test}")
    rng = np.random.default_rng(seed)
    (dest / "train").mkdir(parents=True)
    (dest / "test").mkdir()

    def photo(positive: bool) -> np.ndarray:
        return synthetic_photo(rng, positive=positive, height=int(rng.integers(200, 361)),
                               width=int(rng.integers(240, 401)))

    for cls, positive in ((NEGATIVE, False), (POSITIVE, True)):
        for n in range(1, n_per_class + 1):
            _write_jpeg(dest / "train" / f"{cls}.{n}.jpg", photo(positive))
    test_labels = rng.permutation(np.arange(n_test) < n_test // 2).astype(int).tolist()
    for i, label in enumerate(test_labels, start=1):
        _write_jpeg(dest / "test" / f"{i}.jpg", photo(bool(label)))
    _write_csvs(dest, test_labels)
    return dest


# ----------------------------------------------------------------------------- the cats_and_dogs sample
def _numeric_name_key(path: Path) -> tuple:
    """'cat.2.jpg' before 'cat.10.jpg': the digits of the name compare as numbers."""
    digits = "".join(ch for ch in path.stem if ch.isdigit())
    return (int(digits) if digits else -1, path.name)


def _class_images(folder: Path) -> dict[str, list[Path]]:
    """Kaggle class name -> the images of ``folder/cats`` and ``folder/dogs``, in numeric name order."""
    from kaggle_kit.data import IMAGE_EXTENSIONS

    found = {}
    for sub, cls in CLASS_FOLDERS.items():
        where = folder / sub
        images = [p for p in where.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS] if where.is_dir() else []
        if not images:
            raise KitError(f"{where} holds no images: not the {CATS_AND_DOGS} archive's layout "
                           f"({CATS_AND_DOGS}/{{train,validation}}/{{cats,dogs}}/*.jpg)")
        found[cls] = sorted(images, key=_numeric_name_key)
    return found


def arrange_cats_and_dogs(source: Path, dest: Path, *, seed: int = 0) -> Path:
    """Copy the unpacked archive ``source`` (holding ``train/`` and ``validation/``) into ``dest`` (which must
    not exist) in Kaggle's layout; return ``dest``.

    ``train/{cats,dogs}/*`` become ``train/cat.<n>.<ext>`` / ``train/dog.<n>.<ext>`` (n = 1.. in numeric name
    order); the ``validation/`` photos of both classes become ``test/<id>.<ext>`` with ids 1..m in an order
    shuffled by ``seed``, whose classes are written to ``test_labels.csv`` (label 1 = dog) beside
    ``sample_submission.csv``. ``source`` is left as it was.
    """
    train, validation = _class_images(source / "train"), _class_images(source / "validation")
    (dest / "train").mkdir(parents=True)
    (dest / "test").mkdir()
    for cls, images in train.items():
        for n, path in enumerate(images, start=1):
            shutil.copyfile(path, dest / "train" / f"{cls}.{n}{path.suffix.lower()}")
    held_out = [(path, int(cls == POSITIVE)) for cls, images in validation.items() for path in images]
    order = np.random.default_rng(seed).permutation(len(held_out))
    test_labels = []
    for i, k in enumerate(order, start=1):
        path, label = held_out[k]
        shutil.copyfile(path, dest / "test" / f"{i}{path.suffix.lower()}")
        test_labels.append(label)
    _write_csvs(dest, test_labels)
    return dest


def download_file(url: str, dest: Path, *, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    """Download ``url`` to ``dest`` atomically: ``dest`` appears only once every byte has arrived.

    Raises ``OSError`` (``urllib.error.URLError`` included) or ``http.client.HTTPException`` when it cannot.
    """
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(dest, suffix=".part") as tmp:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)


def _is_finished(folder: Path, params: dict) -> bool:
    """True when ``folder`` is a finished data folder made with ``params``."""
    if not (folder / "manifest.json").is_file():
        return False
    try:
        manifest = read_manifest(folder / "manifest.json", fmt=DATA_FORMAT, rerun="kaggle-kit demo")
    except KitError:
        return False
    return manifest.get("params") == params


def _build_folder(folder: Path, params: dict, build: Callable[[Path], None]) -> Path:
    """Run ``build(staging)`` in a staging folder beside ``folder``, then put the result in its place.

    The manifest (with ``params``) is written last inside the staging folder, which is then renamed to
    ``folder``: a folder that has a manifest is complete. subtle: the staging name is fixed, so the leftovers
    of a killed run are cleared by the next one (two demos sharing a cache at the same moment would collide).
    """
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    build(staging)
    write_json_atomic(staging / "manifest.json", new_manifest(DATA_FORMAT, params=params))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def fetch_cats_and_dogs(cache: Path, *, seed: int = 0, url: str = CATS_AND_DOGS_URL,
                        timeout: float = DOWNLOAD_TIMEOUT, progress: Callable[[str], None] = print) -> Path:
    """``<cache>/cats_and_dogs_filtered``, in Kaggle's layout: reused when finished, else downloaded and arranged.

    ``progress`` gets the download's messages (and the archive's warnings). Network failures propagate
    (``OSError``, ``http.client.HTTPException``); a damaged archive is deleted and refused with a
    :class:`KitError`.
    """
    from kaggle_kit.kaggle_api import extract_zip

    folder = cache / CATS_AND_DOGS
    params = {"url": url, "seed": seed}
    if _is_finished(folder, params):
        return folder
    archive = cache / f"{CATS_AND_DOGS}.zip"
    if not archive.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        progress(f"downloading {url} into {cache} ...")
        t0 = time.perf_counter()
        download_file(url, archive, timeout=timeout)
        progress(f"downloaded {archive.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.0f} s")
    unpacked = cache / f".{CATS_AND_DOGS}.unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    try:
        extract_zip(archive, unpacked, warn=progress)
        _build_folder(folder, params, lambda staging: arrange_cats_and_dogs(unpacked / CATS_AND_DOGS, staging,
                                                                            seed=seed))
    except (zipfile.BadZipFile, KitError) as exc:
        archive.unlink(missing_ok=True)
        raise KitError(f"the downloaded {archive} cannot be used ({exc}); it was deleted: run the demo again "
                       "to download it anew") from None
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    archive.unlink()  # the arranged folder holds every photo; the archive is no longer needed
    return folder


def synthetic_competition(cache: Path, *, n_per_class: int = 120, n_test: int = 80, seed: int = 0) -> Path:
    """``<cache>/synthetic``: the smoke run's competition, reused when made with the same settings."""
    folder = cache / SYNTHETIC
    params = {"n_per_class": n_per_class, "n_test": n_test, "seed": seed, "version": SYNTHETIC_VERSION}
    if _is_finished(folder, params):
        return folder
    return _build_folder(folder, params, lambda staging: make_synthetic_competition(
        staging, n_per_class=n_per_class, n_test=n_test, seed=seed))


def _reason(exc: BaseException) -> str:
    """A one-line reason for a failed download: the cause inside a URLError, else the exception's text."""
    if type(exc) is urllib.error.URLError:  # subtle: not HTTPError, whose own text carries the status code
        exc = exc.reason if isinstance(exc.reason, BaseException) else OSError(exc.reason)
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class DemoData:
    """The competition folder the demo runs on; ``smoke`` when it is synthetic; ``note`` says which, in a line."""

    root: Path
    smoke: bool
    note: str


def prepare_demo_data(cache: Path, *, seed: int = 0, n_per_class: int = 120, n_test: int = 80,
                      url: str = CATS_AND_DOGS_URL, timeout: float = DOWNLOAD_TIMEOUT,
                      progress: Callable[[str], None] = print) -> DemoData:
    """The cats_and_dogs_filtered sample when it can be had, else the synthetic competition (a smoke run)."""
    cache = Path(cache).expanduser()
    try:
        root = fetch_cats_and_dogs(cache, seed=seed, url=url, timeout=timeout, progress=progress)
    except (OSError, http.client.HTTPException) as exc:
        root = synthetic_competition(cache, n_per_class=n_per_class, n_test=n_test, seed=seed)
        note = (f"SMOKE RUN: cannot get {CATS_AND_DOGS} ({_reason(exc)}); running on a synthetic competition "
                f"instead ({2 * n_per_class} train + {n_test} test images in {root}): it shows the pipeline "
                "works, its scores say nothing about real photos")
        return DemoData(root=root, smoke=True, note=note)
    return DemoData(root=root, smoke=False, note=f"competition: {CATS_AND_DOGS} in Kaggle's layout, {root}")


# ---------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class Score:
    """A submission scored against an answer key: ``n`` rows, Kaggle's log loss, accuracy at 0.5, and
    scikit-learn's AUC."""

    n: int
    logloss: float
    accuracy: float
    auc: float


def _read_id_label(path: Path) -> dict[str, str]:
    """id -> label of a two-column CSV (the id, then the label or prediction, whatever the header names them:
    ``id,label``, ``id,has_cactus``, ``image_name,target``)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except ValueError as exc:
        raise KitError(f"{path} is not a readable CSV file ({' '.join(str(exc).split())})", code=2) from None
    if frame.shape[1] != 2:
        raise KitError(f"{path}: expected two columns, the id and the label (found header "
                       f"{','.join(map(str, frame.columns))!r})", code=2)
    ids, labels = (frame[c].str.strip().tolist() for c in frame.columns)
    return {i: v for i, v in zip(ids, labels) if i}


def score_submission(submission: Path, answer_key: Path) -> Score:
    """Score a submission CSV against an answer key CSV (two columns each: id and label; the key's labels 0/1)."""
    from kaggle_kit.metrics import accuracy, auc, log_loss

    predicted, truth = _read_id_label(submission), _read_id_label(answer_key)
    if set(predicted) != set(truth):
        raise KitError(f"{answer_key} and {submission} hold different ids ({len(set(truth) - set(predicted))} "
                       f"only in the key, {len(set(predicted) - set(truth))} only in the submission)", code=2)
    ids = sorted(truth)
    try:
        y = np.array([int(truth[i]) for i in ids])
        p = np.array([float(predicted[i]) for i in ids])
    except ValueError as exc:
        raise KitError(f"cannot score {submission} against {answer_key}: {exc}", code=2) from None
    if not np.isin(y, (0, 1)).all():
        raise KitError(f"{answer_key}: labels must be 0 or 1", code=2)
    return Score(n=len(ids), logloss=float(log_loss(y, p)), accuracy=float(accuracy(y, p)), auc=float(auc(y, p)))


# ------------------------------------------------------------------------------------------------ the recipe
class RecipeStep(NamedTuple):
    """One features stage: ``backbone`` at ``image_size`` (None: the backbone's own), pooling each of ``layers``
    (``last``: the backbone's default features) by ``pool`` (``--pool``) into its own feature set, from one pass."""

    backbone: str
    image_size: int | None
    layers: tuple[str, ...]
    pool: str = DEFAULT_POOL


# The kit's recommended recipe for a new competition (``kaggle-kit demo --recipe``), chosen out of fold on both dev
# sets: dogs-vs-cats-mini (photos) and malaria-mini (cells under a microscope, 50 px), where last-layer features
# of ImageNet networks are weak. Figures: malaria-mini, patient-grouped folds (cv --groups), rotation views,
# logreg head OOF log loss per set (2026-11-30):
# 1. Lite0 at its default 320 px, last layer: the demo's default set, the strongest on photos (on
#    dogs-vs-cats-mini the blend gives it all the weight, so the recipe's submission is the default's); .199;
# 2. Lite2 at 224 px, last layer: the best last layer of the Lites on cells, .170;
# 3. Lite0 at 128 px, block5x (stage 5's end expanded by the next block's 1x1 conv): a mid-level cut, .178;
# 4-6. SqueezeNet at 128 px, fire6_concat and fire5_concat, and at 160 px, fire6_concat, each pooled by its mean
#    and its maximum side by side (--pool avgmax: .142, .163, .149, against .156, .191, .162 for the mean alone:
#    the maximum keeps a parasite's small, strong response that the mean over the cell dilutes; on the Lites'
#    cuts and on last layers it did not help), and at 192 px its last layer by the mean (.154): another
#    network's features, cheap (about 210 / 145 / 115 img/s against 9.8 for step 1 on this 2-core machine), each
#    alone and the four side by side in one concat head (RECIPE_CONCAT, .133; with mean pooling: .141).
# Their blend: .132 (the default's Lite0 320 set alone: .199; the recipe before --pool: .137).
# Every set is extracted with flip TTA (plus the --views asked for) and gets a logreg head (RECIPE_HEADS).
RECIPE: tuple[RecipeStep, ...] = (
    RecipeStep("efficientnet_lite0", None, ("last",)),
    RecipeStep("efficientnet_lite2", 224, ("last",)),
    RecipeStep("efficientnet_lite0", 128, ("block5x",)),
    RecipeStep("squeezenet", 128, ("fire6_concat", "fire5_concat"), "avgmax"),
    RecipeStep("squeezenet", 160, ("fire6_concat",), "avgmax"),
    RecipeStep("squeezenet", 192, ("last",)),
)
RECIPE_HEADS = ("logreg",)  # cv's heads on each of the recipe's feature sets
RECIPE_CONCAT = ("squeezenet_192", "squeezenet_128-fire6_concat.avgmax", "squeezenet_160-fire6_concat.avgmax",
                 "squeezenet_128-fire5_concat.avgmax")  # one concat head on these, in this order
DEMO_BACKBONES = ("efficientnet_lite0",)  # the default demo: one step, the backbone's default features
DEMO_EXP, RECIPE_EXP = "demo", "demo-recipe"  # separate experiments: a blend takes every cv model of its experiment
# Backbones whose ImageNet weights come only as a file (nothing downloads them): ``--weights-dir`` is for them.
FILE_WEIGHTS_BACKBONES = ("squeezenet",)


def step_feature_sets(step: RecipeStep) -> list[str]:
    """The names of the feature sets ``step`` makes (:func:`kaggle_kit.store.default_feature_set_name`)."""
    from kaggle_kit.backbones import LAST, get_backbone
    from kaggle_kit.store import default_feature_set_name

    spec = get_backbone(step.backbone)
    size = step.image_size or spec.input_size
    return [default_feature_set_name(spec.name, input_size=spec.input_size, image_size=size,
                                     layer=None if layer == LAST else layer, pool=step.pool)
            for layer in dict.fromkeys(step.layers)]


def _step_weights(backbone: str, weights_dir: Path | None) -> str | None:
    """``--weights`` for a step of ``backbone``: ``weights_dir`` for the backbones that need a file, else None
    (the default, 'imagenet')."""
    return str(weights_dir) if weights_dir is not None and backbone in FILE_WEIGHTS_BACKBONES else None


def features_argv(step: RecipeStep, *, data_dir: Path, exp: str, weights: str | None = None, views: int = 0,
                  view_kind: str = DEFAULT_VIEW_KIND, positive: str | None = None) -> list[str]:
    """The ``kaggle-kit features`` arguments of ``step`` with flip TTA; options left at their defaults are not
    written (a default step's line is the demo's line from before recipes)."""
    from kaggle_kit.backbones import LAST

    return ["features", "--data", str(data_dir), "--exp", exp, "--backbone", step.backbone,
            *(["--image-size", str(step.image_size)] if step.image_size is not None else []),
            *(a for layer in step.layers if layer != LAST for a in ("--layer", layer)),
            *(["--pool", step.pool] if step.pool != DEFAULT_POOL else []),
            *(["--weights", weights] if weights is not None else []),
            "--tta", "flip",
            *(["--views", str(views), "--view-kind", view_kind] if views else []),
            *(["--positive", positive] if positive else [])]


def _check_weights_files(steps: Sequence[RecipeStep], weights_dir: Path | None) -> None:
    """Refuse, before any stage runs, a step whose backbone's weights file cannot be found (in ``weights_dir`` or
    the folders of $KAGGLE_KIT_WEIGHTS): one line that says what to attach and where it was looked for."""
    from kaggle_kit.backbones import get_backbone, resolve_weights

    for backbone in dict.fromkeys(s.backbone for s in steps if s.backbone in FILE_WEIGHTS_BACKBONES):
        try:
            resolve_weights(get_backbone(backbone), _step_weights(backbone, weights_dir) or "imagenet")
        except KitError as exc:  # subtle: the demo's option is --weights-dir (features' is --weights)
            raise KitError(f"demo: {str(exc).replace('--weights DIR', '--weights-dir DIR')}", code=exc.code) from None


# --------------------------------------------------------------------------------------------- the run
def _stage(argv: list[str], run: Callable[[], Any], *, echo: Callable[[str], None],
           warn: Callable[[str], None]) -> Any:
    """Print ``$ kaggle-kit ARGV`` (the command that does what ``run`` does), run it, print what the command
    prints (its warnings to ``warn``); ``run`` returns a result or a list of them (one per feature set). A failing
    stage's error says that the demo stopped there."""
    echo(f"$ kaggle-kit {shlex.join(argv)}")
    try:
        result = run()
    except KitError as exc:
        raise KitError(f"{exc} (the demo stopped at 'kaggle-kit {argv[0]}'; finished stages are cached: run the "
                       "demo again once it is fixed)", code=exc.code) from None
    for part in result if isinstance(result, list) else [result]:
        for line in getattr(part, "warnings", list)():
            warn(line)
        for line in part.lines():
            echo(line)
    return result


def run_demo(*, data: Path | None, exp: str | None = None, backbones: Sequence[str] | None = None,
             recipe: bool = False, folds: int = DEFAULT_FOLDS, heads: Sequence[str] = (),
             cache: Path = DEFAULT_CACHE, positive: str | None = None, views: int = 0,
             view_kind: str = DEFAULT_VIEW_KIND, groups: str | None = None, weights_dir: Path | None = None,
             root: Path | str = ".", echo: Callable[[str], None] = print,
             progress: Callable[[str], None] = print) -> Path:
    """Run features (flip TTA) for each backbone -> cv -> blend -> submit; return the submission's path.

    ``backbones`` default to :data:`DEMO_BACKBONES`; ``heads`` are cv's heads (none: its default heads). With
    ``recipe`` the features stages are the steps of :data:`RECIPE` instead, cv fits :data:`RECIPE_HEADS` on each
    of their sets and a concat head on :data:`RECIPE_CONCAT` (``backbones`` and ``heads`` are then refused: the
    recipe fixes them). ``exp`` defaults to :data:`DEMO_EXP`, or :data:`RECIPE_EXP` with ``recipe``. ``views``
    and ``view_kind`` go to every features stage, ``groups`` (group-wise folds) to the first cv stage,
    ``weights_dir`` (as ``--weights``) to the stages of :data:`FILE_WEIGHTS_BACKBONES`, whose weights file is
    looked for before any stage runs. Experiments and submissions go under ``root``.

    Without ``data`` the competition comes from :func:`prepare_demo_data`; a smoke run uses the experiment
    ``<exp>-smoke`` (so it never mixes with real results) and a submission named ``SMOKE-RUN-...``. Prints
    each stage's command line and output, the ladder, the score against the answer key when the folder has
    one, and the submission path last. ``echo`` gets the report (its first line says where the competition
    comes from), ``progress`` the download's messages and the stages' warnings.
    """
    from kaggle_kit.blend import run_blend
    from kaggle_kit.cv import run_cv
    from kaggle_kit.features import run_feature_sets
    from kaggle_kit.folds import NO_GROUPS, groups_regex
    from kaggle_kit.store import experiment_dir
    from kaggle_kit.submit import make_submission, submission_path
    from kaggle_kit.views import view_names

    if recipe and backbones is not None:
        raise KitError(f"--recipe runs its own backbones; drop --backbone {' '.join(backbones)} (or drop --recipe)",
                       code=2)
    if recipe and heads:
        raise KitError(f"--recipe fixes its heads ({', '.join(RECIPE_HEADS)} on each feature set, concat on "
                       f"{', '.join(RECIPE_CONCAT)}); drop --head {' '.join(heads)} (or drop --recipe)", code=2)
    backbones = DEMO_BACKBONES if backbones is None else backbones
    if not recipe and not backbones:
        raise KitError("--backbone: give at least one backbone", code=2)
    exp = exp or (RECIPE_EXP if recipe else DEMO_EXP)
    check_name("experiment", exp)
    view_names(views, view_kind)  # a bad --views is refused before anything is made
    if groups not in (None, *NO_GROUPS):
        groups_regex(groups)  # so is a bad --groups pattern
    steps = RECIPE if recipe else tuple(RecipeStep(b, None, ("last",)) for b in backbones)
    _check_weights_files(steps, weights_dir)
    if data is None:
        prepared = prepare_demo_data(cache, progress=progress)
        echo(prepared.note)
        data_dir, smoke = prepared.root, prepared.smoke
    else:
        data_dir, smoke = Path(data), False
    exp = f"{exp}-smoke" if smoke else exp
    exp_dir = experiment_dir(exp, root=root)
    for step in steps:
        weights = _step_weights(step.backbone, weights_dir)
        _stage(features_argv(step, data_dir=data_dir, exp=exp, weights=weights, views=views, view_kind=view_kind,
                             positive=positive),
               lambda: run_feature_sets(exp_dir, backbone=step.backbone, data=data_dir, weights=weights or "imagenet",
                                        image_size=step.image_size, tta="flip", views=views, view_kind=view_kind,
                                        positive=positive, layers=list(step.layers), pool=step.pool,
                                        warn=progress),
               echo=echo, warn=progress)
    # subtle: cv is told the demo's feature sets, or it would also fit every other one cached in the experiment.
    feature_sets = [name for step in steps for name in step_feature_sets(step)]
    heads = list(RECIPE_HEADS if recipe else heads)
    with_groups = ["--groups", groups] if groups is not None else []
    _stage(["cv", "--exp", exp, "--folds", str(folds), *with_groups,
            *(a for s in feature_sets for a in ("--backbone", s)), *(a for h in heads for a in ("--head", h))],
           lambda: run_cv(exp_dir, n_folds=folds, groups=groups, feature_sets=feature_sets, heads=heads or None),
           echo=echo, warn=progress)
    if recipe:  # the plan made (or kept) by the first cv stage holds: no --groups here
        _stage(["cv", "--exp", exp, "--folds", str(folds), *(a for s in RECIPE_CONCAT for a in ("--backbone", s)),
                "--head", "concat"],
               lambda: run_cv(exp_dir, n_folds=folds, feature_sets=list(RECIPE_CONCAT), heads=["concat"]),
               echo=echo, warn=progress)
    blended = _stage(["blend", "--exp", exp], lambda: run_blend(exp_dir, warn=progress), echo=echo, warn=progress)
    path = submission_path(exp=exp, name=None, now=datetime.now(), root=root)
    if smoke:
        path = path.with_name(f"SMOKE-RUN-{path.name}")
    submission = _stage(["submit", "--exp", exp, "--name", path.name],
                        lambda: make_submission(exp_dir, name=path.name, root=root), echo=echo, warn=progress)

    echo("")
    echo(blended.ladder_line())
    key = data_dir / ANSWER_KEY
    if key.is_file():
        score = score_submission(submission.path, key)
        echo(f"scored against the answer key {key}: log loss {score.logloss:.5f}, "
             f"accuracy {100 * score.accuracy:.2f} %, AUC {score.auc:.5f} on {score.n} test images")
    if smoke:
        echo("SMOKE RUN finished: synthetic images, so these scores only show that every stage works")
    echo(str(submission.path))
    return submission.path
