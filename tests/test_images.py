import cv2
import numpy as np
import pytest
from PIL import Image

from kaggle_kit.data import discover
from kaggle_kit.images import decode_image, iter_batches, resize_rgb

SIZE = 32


@pytest.fixture
def photo(small_comp):
    return small_comp / "train" / "cat.1.jpg"


def test_loader_yields_every_image_once_in_order(small_comp):
    paths = discover(small_comp).train_paths()
    seen = []
    for batch, ok in iter_batches(paths, size=SIZE, batch_size=3, workers=3, prefetch_batches=1):
        assert batch.dtype == np.uint8 and ok.all()
        seen.extend(batch)
    assert len(seen) == len(paths)  # 20 images in batches of 3: the last partial batch is there
    for img, p in zip(seen, paths):
        np.testing.assert_array_equal(img, decode_image(p, SIZE))


def test_loader_marks_unreadable_images_and_goes_on(small_comp, tmp_path):
    paths = discover(small_comp).train_paths()[:5]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"definitely not a JPEG")
    batches = list(iter_batches([paths[0], broken, *paths[1:]], size=SIZE, batch_size=4, workers=2))
    ok = np.concatenate([o for _, o in batches])
    assert ok.tolist() == [True, False, True, True, True, True]
    assert not batches[0][0][1].any()  # a zero image in its place


@pytest.mark.parametrize("kind", ["gray_png", "alpha_png_named_jpg", "sixteen_bit_png", "cmyk_jpg",
                                  "webp_named_jpg", "bmp"])
def test_odd_but_valid_images_decode_to_rgb(kind, photo, tmp_path):
    bgr = cv2.imread(str(photo))
    path = tmp_path / "img.jpg"
    if kind == "gray_png":
        path = tmp_path / "img.png"
        cv2.imwrite(str(path), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    elif kind == "alpha_png_named_jpg":
        ok, buf = cv2.imencode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
        path.write_bytes(buf.tobytes())
    elif kind == "sixteen_bit_png":
        path = tmp_path / "img.png"
        cv2.imwrite(str(path), bgr.astype(np.uint16) * 257)
    elif kind == "cmyk_jpg":
        Image.open(photo).convert("CMYK").save(path, "JPEG")
    elif kind == "webp_named_jpg":
        ok, buf = cv2.imencode(".webp", bgr)
        path.write_bytes(buf.tobytes())
    else:
        path = tmp_path / "img.bmp"
        cv2.imwrite(str(path), bgr)
    img = decode_image(path, 48)
    assert img is not None and img.shape == (48, 48, 3) and img.dtype == np.uint8
    reference = decode_image(photo, 48).astype(int)
    if kind != "gray_png":  # colour survives: close to the original photo
        assert np.abs(img.astype(int) - reference).mean() < 12


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"%PDF-1.4 not an image", "truncated"])
def test_unreadable_files_give_none(content, photo, tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(photo.read_bytes()[: len(photo.read_bytes()) // 2] if content == "truncated" else content)
    assert decode_image(path, 48) is None
    assert decode_image(tmp_path / "missing.jpg", 48) is None


@pytest.mark.slow  # encodes and decodes a 108-megapixel photo: as many pixels as 500 photos
def test_a_huge_photo_decodes_at_reduced_scale(tmp_path):
    big = np.zeros((9000, 12000, 3), np.uint8)
    big[:, :6000] = (0, 0, 255)  # left half red (BGR)
    path = tmp_path / "huge.jpg"
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 50])
    img = decode_image(path, 64)
    assert img is not None and img.shape == (64, 64, 3)
    assert img[:, :28, 0].min() > 200 and img[:, 36:, 0].max() < 50  # RGB: red on the left


def test_resize_uses_area_when_shrinking():
    img = np.zeros((4, 4, 3), np.uint8)
    img[::2, ::2] = 255  # single bright pixels: area averaging gives their mean, nearest would not
    np.testing.assert_array_equal(resize_rgb(img, 2), np.full((2, 2, 3), 64, np.uint8))


def test_resize_enlarges_smoothly():
    img = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)  # 1 x 2
    out = resize_rgb(img, 8)
    assert len(np.unique(out[..., 0])) > 2  # bilinear gives intermediate values; nearest would give two
