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


# ------------------------------------------------------------------------ TIFF, 16-bit, float, grayscale, alpha
def _rgb_reference(photo, size: int) -> np.ndarray:
    """An RGB uint8 (size, size, 3) image from a real photo, at the size decode_image returns (no resizing)."""
    return decode_image(photo, size)


@pytest.mark.parametrize("kind", ["tiff_8bit", "tiff_16bit", "png_16bit", "tiff_float", "tiff_bgra",
                                  "png_16bit_bgra", "tiff_gray_16bit", "png_gray_alpha", "tiff_gray_float"])
def test_tiff_16bit_float_gray_and_alpha_decode_like_the_8bit_image(kind, photo, tmp_path):
    """The same pixels stored another way decode to the same RGB uint8 (up to rounding): 16-bit scaled by
    255/65535 (not shifted by 8 bits, not clipped), float taken as [0, 1], alpha dropped, gray repeated."""
    from PIL import Image

    rgb = _rgb_reference(photo, 40)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    path = tmp_path / ("img.png" if "png" in kind else "img.tif")
    expected = rgb
    if kind == "tiff_8bit":
        cv2.imwrite(str(path), bgr)
    elif kind in ("tiff_16bit", "png_16bit"):
        cv2.imwrite(str(path), bgr.astype(np.uint16) * 257)  # 255 -> 65535: the full 16-bit range
    elif kind == "tiff_float":
        cv2.imwrite(str(path), bgr.astype(np.float32) / 255.0)
    elif kind == "tiff_bgra":
        alpha = np.linspace(0, 255, 40 * 40).reshape(40, 40).astype(np.uint8)  # any alpha: it is dropped
        cv2.imwrite(str(path), np.dstack([bgr, alpha]))
    elif kind == "png_16bit_bgra":
        cv2.imwrite(str(path), np.dstack([bgr, np.full((40, 40), 255, np.uint8)]).astype(np.uint16) * 257)
    elif kind == "tiff_gray_16bit":
        cv2.imwrite(str(path), gray.astype(np.uint16) * 257)
        expected = np.dstack([gray] * 3)
    elif kind == "png_gray_alpha":
        Image.fromarray(np.dstack([gray, np.full_like(gray, 7)]), "LA").save(path)
        expected = np.dstack([gray] * 3)
    else:  # tiff_gray_float
        cv2.imwrite(str(path), gray.astype(np.float32) / 255.0)
        expected = np.dstack([gray] * 3)
    img = decode_image(path, 40)
    assert img is not None and img.shape == (40, 40, 3) and img.dtype == np.uint8
    assert np.abs(img.astype(int) - expected.astype(int)).max() <= 1, kind


def test_sixteen_bit_values_are_scaled_not_shifted(tmp_path):
    """v -> round(v * 255 / 65535): 1000 -> 4 and 64000 -> 249, where a shift by 8 bits gives 3 and 250."""
    values = np.array([0, 257, 32896, 65535, 1000, 64000], np.uint16)
    img16 = np.tile(values, (6, 1))
    path = tmp_path / "ramp.tif"
    cv2.imwrite(str(path), img16)
    img = decode_image(path, 6)
    np.testing.assert_array_equal(img[0, :, 0], [0, 1, 128, 255, 4, 249])
    np.testing.assert_array_equal(img[0, :, 0], np.rint(values.astype(float) * 255 / 65535).astype(np.uint8))
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


def test_a_float_tiff_outside_zero_one_is_clipped_and_nan_is_black(tmp_path):
    img = np.array([[-0.5, 0.5, 2.0, np.nan]] * 4, np.float32)
    path = tmp_path / "f.tif"
    cv2.imwrite(str(path), img)
    np.testing.assert_array_equal(decode_image(path, 4)[0, :, 0], [0, 128, 255, 0])
