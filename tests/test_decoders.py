"""The decoder choice (--decoder opencv|dali): selection and errors on any machine, the DALI batch driver's
rows and order, and, where NVIDIA DALI is installed, its real graph on the CPU against the OpenCV path."""

import collections
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kaggle_kit.artifacts import KitError
from kaggle_kit.backbones import REGISTRY, WeightsChoice
from kaggle_kit.cli import app, main
from kaggle_kit.decoders import DECODERS, check_decoder, dali_batches, iter_batches
from kaggle_kit.features import FeatureSettings
from kaggle_kit.images import decode_image, resize_rgb
from kaggle_kit.store import features_command

from conftest import MINI

NONE = WeightsChoice("none", None, "none (random init, seed 0)")
runner = CliRunner()


def _settings(**kw):
    return FeatureSettings(backbone=REGISTRY["resnet50"], weights=NONE, image_size=32, **kw)


@pytest.fixture
def no_dali(monkeypatch):
    """Make ``import nvidia.dali`` fail, whether or not DALI is installed here."""
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    monkeypatch.setitem(sys.modules, "nvidia.dali.backend", None)


def _fake_dali(monkeypatch, count):
    """An importable nvidia.dali whose backend reports ``count`` CUDA devices (a callable: raise to fail)."""
    nvidia = types.ModuleType("nvidia")
    nvidia.__path__ = []
    dali = types.ModuleType("nvidia.dali")
    dali.__path__ = []
    backend = types.ModuleType("nvidia.dali.backend")
    backend.GetCUDADeviceCount = count
    dali.backend = backend
    nvidia.dali = dali
    for name, mod in (("nvidia", nvidia), ("nvidia.dali", dali), ("nvidia.dali.backend", backend)):
        monkeypatch.setitem(sys.modules, name, mod)


# ------------------------------------------------------------------------------------------ selection, errors
def test_opencv_is_the_default_and_needs_nothing():
    assert DECODERS[0] == "opencv" and _settings().decoder == "opencv"
    check_decoder("opencv")


def test_an_unknown_decoder_is_refused_by_the_settings_and_the_cli(capsys):
    with pytest.raises(KitError, match="unknown decoder 'nvjpeg'; choose one of: opencv, dali"):
        _settings(decoder="nvjpeg")
    with pytest.raises(SystemExit) as exit_info:
        main(["features", "--decoder", "nvjpeg"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and "'nvjpeg' is not one of 'opencv', 'dali'" in err


def test_dali_not_installed_is_one_line_that_says_what_to_install(no_dali):
    with pytest.raises(KitError) as info:
        check_decoder("dali")
    assert "pip install 'kaggle-kit[dali]'" in str(info.value) and "--decoder opencv" in str(info.value)
    assert "\n" not in str(info.value) and info.value.code == 2


@pytest.mark.parametrize("count", [lambda: 0, lambda: (_ for _ in ()).throw(RuntimeError("CUDA driver missing"))])
def test_dali_without_a_gpu_is_one_line(monkeypatch, count):
    _fake_dali(monkeypatch, count)
    with pytest.raises(KitError) as info:
        check_decoder("dali")
    assert "NVIDIA GPU" in str(info.value) and "--decoder opencv" in str(info.value)
    assert "\n" not in str(info.value)


def test_dali_with_a_gpu_passes_the_check(monkeypatch):
    _fake_dali(monkeypatch, lambda: 1)
    check_decoder("dali")


def test_features_with_dali_missing_stops_before_any_work(no_dali, tmp_path, monkeypatch, small_comp):
    monkeypatch.chdir(tmp_path)
    import kaggle_kit.backbones as backbones_mod

    monkeypatch.setattr(backbones_mod, "build_extractor", lambda *a, **k: pytest.fail("model built"))
    result = runner.invoke(app, ["features", "--backbone", "resnet50", "--weights", "none", "--decoder", "dali",
                                 "--data", str(small_comp)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: --decoder dali needs NVIDIA DALI")
    assert "pip install 'kaggle-kit[dali]'" in result.stderr
    assert not list(tmp_path.glob("experiments/*/features/*/manifest.json"))


def test_the_decoder_is_in_the_key_and_the_rerun_hint(tmp_path):
    opencv, dali = _settings(), _settings(decoder="dali")
    assert opencv.key("h") != dali.key("h")  # other pixels, other features: never mixed in one cache
    assert opencv.key("h") == _settings(batch_size=7, workers=3).key("h")  # how it is computed does not count
    out = tmp_path / "experiments" / "default" / "features" / "resnet50"
    manifest = {"backbone": "resnet50", "input_size": 224, "weights_kind": "imagenet", "tta": "none"}
    assert "--decoder" not in features_command(out, manifest)
    assert "--decoder" not in features_command(out, {**manifest, "decoder": "opencv"})
    dali_hint = features_command(out, {**manifest, "decoder": "dali"})
    assert dali_hint == "kaggle-kit features --backbone resnet50 --decoder dali"


def test_importing_the_kit_never_imports_dali():
    code = ("import sys, kaggle_kit.cli, kaggle_kit.features, kaggle_kit.decoders; "
            "print(sorted(m for m in sys.modules if m.startswith('nvidia')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------ the DALI batch driver
def _competition_files(tmp_path: Path) -> list[Path]:
    """Real photos with unreadable files among them: empty, cut short, garbage that passes the cheap checks,
    a whole batch of garbage (batch size 4), and a text file."""
    photos = sorted((MINI / "train").glob("*.jpg"))[:12]
    garbage = b"\xff\xd8" + b"not a jpeg at all " * 40 + b"\xff\xd9"
    files = []
    for i, src in enumerate(photos):
        dst = tmp_path / f"{i:02d}.jpg"
        shutil.copy(src, dst)
        files.append(dst)
    specials = {
        3: b"",  # empty
        6: photos[0].read_bytes()[:3000],  # cut short (no end-of-image marker)
        9: garbage,  # passes the pre-check, fails to decode
        12: garbage, 13: garbage, 14: garbage, 15: garbage,  # a whole batch of 4 that DALI refuses
        17: b"just some text\n",
    }
    for pos in sorted(specials):
        bad = tmp_path / f"bad{pos:02d}.jpg"
        bad.write_bytes(specials[pos])
        files.insert(pos, bad)
    return files


class _TensorList:
    def __init__(self, array):
        self._array = array

    def as_array(self):
        return self._array


class _OpenCvPipeline:
    """DALI's pipeline as dali_batches sees it (test_real_dali_matches_the_opencv_path checks the real one):
    ``source`` is pulled to keep two batches in flight; a batch with an undecodable file fails the run() that
    would return it; StopIteration after the last output. It decodes with OpenCV, so rows can be compared."""

    def __init__(self, source, size):
        self.source, self.size, self.queue, self.ended = source, size, collections.deque(), False

    def run(self):
        while not self.ended and len(self.queue) < 2:
            try:
                self.queue.append(self.source())
            except StopIteration:
                self.ended = True
        if not self.queue:
            raise StopIteration
        import cv2

        batch = [cv2.imdecode(raw, cv2.IMREAD_COLOR) for raw in self.queue.popleft()]
        if any(img is None for img in batch):
            raise RuntimeError("Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.image`")
        return (_TensorList(np.stack([resize_rgb(cv2.cvtColor(i, cv2.COLOR_BGR2RGB), self.size) for i in batch])),)


def _collect(batches):
    images, ok, sizes = [], [], []
    for b, k in batches:
        images.append(np.asarray(b))
        ok.append(k)
        sizes.append(len(k))
    return np.concatenate(images), np.concatenate(ok), sizes


def test_the_dali_driver_keeps_rows_order_and_unreadable_files_like_opencv(tmp_path):
    files = _competition_files(tmp_path)  # 20 files, batch 4: five batches, one entirely unreadable
    ref_images, ref_ok, _ = _collect(iter_batches(files, size=32, batch_size=4, workers=2))
    builds = []

    def build(source):
        builds.append(1)
        return _OpenCvPipeline(source, 32)

    images, ok, sizes = _collect(dali_batches(files, size=32, batch_size=4, workers=2, handoff="numpy", build=build))
    assert sizes == [4, 4, 4, 4, 4]
    np.testing.assert_array_equal(ok, ref_ok)
    assert not ok[[3, 6, 9, 12, 13, 14, 15, 17]].any() and ok.sum() == 12
    np.testing.assert_array_equal(images, ref_images)  # same rows; unreadable ones are zero images
    assert len(builds) == 4  # a fresh pipeline after each refused batch (rows 8-11, 12-15, 16-19)


def test_the_dali_driver_handles_a_short_last_batch_and_only_unreadable_files(tmp_path):
    files = _competition_files(tmp_path)[:7]
    _, ref_ok, _ = _collect(iter_batches(files, size=16, batch_size=3))
    images, ok, sizes = _collect(dali_batches(files, size=16, batch_size=3, handoff="numpy",
                                              build=lambda s: _OpenCvPipeline(s, 16)))
    assert sizes == [3, 3, 1] and images.shape == (7, 16, 16, 3)
    np.testing.assert_array_equal(ok, ref_ok)
    bad = [tmp_path / "bad12.jpg", tmp_path / "bad03.jpg"]
    images, ok, sizes = _collect(dali_batches(bad, size=16, batch_size=4, handoff="numpy",
                                              build=lambda s: _OpenCvPipeline(s, 16)))
    assert sizes == [2] and not ok.any() and not images.any()
    assert list(dali_batches([], size=16, batch_size=4, build=lambda s: pytest.fail("built"))) == []


def test_a_systematic_dali_failure_stops_with_one_line(tmp_path):
    files = _competition_files(tmp_path)[:3]

    class Broken:
        def __init__(self, source):
            self.source = source

        def run(self):
            self.source()
            raise RuntimeError("Critical error in pipeline:\nCUDA error: out of memory")

    with pytest.raises(KitError, match=r"DALI failed on 3 batches in a row that OpenCV reads \(CUDA error: out of "
                                       r"memory\); use --decoder opencv"):
        list(dali_batches(files * 4, size=16, batch_size=3, handoff="numpy", build=Broken))
    with pytest.raises(KitError, match=r"cannot start the DALI decoder \(no GPU memory\)"):
        list(dali_batches(files, size=16, batch_size=3, handoff="numpy",
                          build=lambda s: (_ for _ in ()).throw(RuntimeError("no GPU memory"))))


# ----------------------------------------------------------- real DALI, its CPU graph (`make test-dali` only)
@pytest.mark.dali
def test_real_dali_matches_the_opencv_path(tmp_path):
    """The real DALI graph (decode, resize) on the CPU: same rows and order as the OpenCV path, pixels within
    the tolerance the decoders module documents. Needs ``pip install 'kaggle-kit[dali]'`` (no GPU)."""
    from kaggle_kit.decoders import build_dali_pipeline

    files = _competition_files(tmp_path)
    files += sorted((MINI / "train").glob("dog.*.jpg"))[:44]  # 64 files, batches of 8
    for size in (224, 299):
        ref_images, ref_ok, _ = _collect(iter_batches(files, size=size, batch_size=8, workers=2))

        def build(source, size=size):
            return build_dali_pipeline(source, size=size, batch_size=8, threads=2, device="cpu")

        images, ok, sizes = _collect(dali_batches(files, size=size, batch_size=8, handoff="numpy", build=build))
        assert sizes == [8] * 8
        np.testing.assert_array_equal(ok, ref_ok)
        assert not images[~ok].any()
        # Rows 8-23 hold files DALI refuses: those two batches come from OpenCV, identical; the rest is DALI's.
        dali_rows = np.r_[0:8, 24:64][ok[np.r_[0:8, 24:64]]]
        np.testing.assert_array_equal(images[8:24], ref_images[8:24])
        diff = np.abs(images[dali_rows].astype(int) - ref_images[dali_rows].astype(int))
        assert diff.mean() < 0.8 and np.percentile(diff, 99) <= 6, (size, diff.mean(), np.percentile(diff, 99))
        per_image = diff.reshape(len(dali_rows), -1).mean(1)
        assert per_image.max() < 3, (size, per_image.max())  # no row is another image
        assert decode_image(files[0], size) is not None


@pytest.mark.dali
def test_real_dali_hands_batches_to_jax_through_dlpack(tmp_path):
    """The DLPack hand-off (what Keras on JAX gets on a GPU), here with DALI's and JAX's CPU devices: the same
    pixels as DALI's host copy. Needs DALI and JAX installed."""
    import jax  # noqa: F401  (make test-dali installs it)

    from kaggle_kit.decoders import build_dali_pipeline

    files = sorted((MINI / "train").glob("cat.*.jpg"))[:20]

    def build(source):
        return build_dali_pipeline(source, size=64, batch_size=8, threads=2, device="cpu")

    host = list(dali_batches(files, size=64, batch_size=8, handoff="numpy", build=build))
    device = list(dali_batches(files, size=64, batch_size=8, handoff="jax", build=build))
    assert [type(b).__module__.split(".")[0] for b, _ in device] == ["jaxlib"] * 3
    for (h, _), (d, _) in zip(host, device, strict=True):
        np.testing.assert_array_equal(np.asarray(d), h)
