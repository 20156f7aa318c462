"""Decoding and resizing images with OpenCV, and a threaded loader that prefetches ordered uint8 batches.

Every image comes out as RGB uint8 of shape (size, size, 3): the backbone's in-graph preprocessing does the
rest (channel order included), so the loader is the same for every backbone. Resizing is area interpolation
when shrinking and bilinear when enlarging; never nearest-neighbour.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

# Above this many pixels a JPEG is decoded at reduced scale first (libjpeg's DCT scaling): a 12,000 x 9,000
# photo would otherwise need 324 MB and a second of CPU per image.
_REDUCE_ABOVE_PIXELS = 16_000_000
# Above this many pixels an image is refused as unreadable: a header claiming 65,000 x 65,000 is a decompression
# bomb or a lie (libjpeg would fill the missing rows with gray), not a photo.
_MAX_PIXELS = 1 << 28
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the image's size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def decode_image(path: Path | str, size: int) -> np.ndarray | None:
    """Read one image file and return RGB uint8 (size, size, 3), or None if it cannot be decoded.

    Grayscale, alpha, 16-bit, floating-point (TIFF) and CMYK inputs all come out as 8-bit RGB (see
    :func:`to_rgb8`). The file's bytes decide the format, not its name: a PNG called ``.jpg`` reads fine.
    """
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if not passes_precheck(data):
        return None
    dims = _header_size(data)
    if _is_jpeg(data):
        # JPEG is 8-bit: IMREAD_COLOR converts grayscale and CMYK, honours EXIF orientation and can decode at
        # reduced scale.
        flags = _reduced_flag(dims, size) if dims else cv2.IMREAD_COLOR
    else:
        # subtle: IMREAD_COLOR would shift 16-bit samples right by 8 bits and refuse 32-bit float TIFFs; keep the
        # depth and the channels (alpha is dropped by ANYCOLOR) and convert them in to_rgb8.
        flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error:  # e.g. a header claiming more pixels than OpenCV accepts (a decompression bomb)
        return None
    if img is None or img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        return None
    rgb = to_rgb8(img)
    return None if rgb is None else resize_rgb(rgb, size)


def to_rgb8(img: np.ndarray) -> np.ndarray | None:
    """An image as OpenCV decodes it (BGR, BGRA, or grayscale (h, w) / (h, w, 1); uint8, uint16 or float) ->
    RGB uint8 (h, w, 3); None for a depth or channel count that has no such meaning.

    Depth: uint16 is scaled by 255 / 65535 (0 -> 0, 65535 -> 255, rounded), so a 16-bit image looks like its
    8-bit version; floating point is taken as [0, 1] (clipped; NaN -> 0), as TIFF and OpenEXR store it. Alpha
    is dropped, grayscale repeated into three channels.
    """
    import cv2

    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels not in (1, 3, 4):
        return None
    if img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)  # rounds and saturates to uint8
    elif img.dtype in (np.float32, np.float64):
        img = np.rint(np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        return None
    code = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}[channels]
    return cv2.cvtColor(img, code)


def _is_jpeg(data: np.ndarray) -> bool:
    return data.size >= 3 and data[0] == 0xFF and data[1] == 0xD8 and data[2] == 0xFF


def passes_precheck(data: np.ndarray) -> bool:
    """False for file bytes refused before any decoding: empty, a JPEG cut short, or a header claiming more
    than ``_MAX_PIXELS`` pixels. Every decoder (OpenCV here, DALI in decoders.py) applies the same checks."""
    if data.size == 0 or _is_truncated_jpeg(data):
        return False
    # subtle: the pixel count decides, not the file size: a 12,000 x 9,000 photo of plain content is 2 MB.
    dims = _header_size(data)
    return not (dims and dims[0] * dims[1] > _MAX_PIXELS)


def _is_truncated_jpeg(data: np.ndarray) -> bool:
    """A JPEG without its end-of-image marker near the end was cut short.

    subtle: OpenCV decodes a truncated JPEG without error and fills the missing rows with gray, which would
    put a half-gray photo into the training set; such a file is reported as unreadable instead.
    """
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    tail = data[-4096:].tobytes()
    return b"\xff\xd9" not in tail


def _header_size(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) that a PNG or JPEG header claims, read without decoding; None for other formats."""
    if data.size >= 24 and data[:8].tobytes() == _PNG_SIGNATURE:
        w, h = int.from_bytes(data[16:20].tobytes(), "big"), int.from_bytes(data[20:24].tobytes(), "big")
        return h, w
    return _jpeg_size(data)


def _jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame header, or None (not a JPEG, or no frame header found).

    Walks the marker segments only (a few dozen bytes read), so it costs microseconds for any file size.
    """
    n = min(int(data.size), 1 << 20)  # headers (EXIF, ICC profiles) precede the frame; 1 MB is plenty
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = int(data[i + 1])
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _JPEG_SOF:
            h, w = (int(data[i + 5]) << 8) | int(data[i + 6]), (int(data[i + 7]) << 8) | int(data[i + 8])
            return (h, w) if h and w else None
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
            return None
        i += 2 + ((int(data[i + 2]) << 8) | int(data[i + 3]))
    return None


def _reduced_flag(dims: tuple[int, int], size: int) -> int:
    """Pick IMREAD_REDUCED_COLOR_{2,4,8} for a huge (height, width) image while keeping both sides >= ``size``."""
    import cv2

    h, w = dims
    if h * w <= _REDUCE_ABOVE_PIXELS:
        return cv2.IMREAD_COLOR
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if min(h, w) // factor >= size:
            return flag
    return cv2.IMREAD_COLOR


def resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    """Resize (h, w, 3) to (size, size, 3): INTER_AREA to shrink, INTER_LINEAR to enlarge (never nearest)."""
    import cv2

    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if h * w >= size * size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def iter_batches(
    paths: Sequence[Path | str],
    *,
    size: int,
    batch_size: int,
    workers: int | None = None,
    prefetch_batches: int = 4,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, ok)`` batches in the order of ``paths``: images uint8 (n, size, size, 3), ok bool (n,).

    Decoding runs in a thread pool (OpenCV releases the GIL) at most ``prefetch_batches`` batches ahead of the
    consumer, so memory stays bounded while inference overlaps decoding. Unreadable images give a zero image
    and ``ok = False``. The last batch may be shorter; it is always yielded.
    """
    import cv2

    cv2.setNumThreads(1)  # subtle: OpenCV's own pool would fight the decoder threads and the model for cores
    workers = workers or max(1, (os.cpu_count() or 1))
    window = max(1, prefetch_batches) * batch_size
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kk-decode") as pool:
        pending: collections.deque[Future] = collections.deque()
        it = iter(paths)
        exhausted = False

        def top_up():
            nonlocal exhausted
            while not exhausted and len(pending) < window:
                try:
                    path = next(it)
                except StopIteration:
                    exhausted = True
                    return
                pending.append(pool.submit(decode_image, path, size))

        top_up()
        while pending:
            n = min(batch_size, len(pending))
            batch = np.zeros((n, size, size, 3), dtype=np.uint8)
            ok = np.zeros(n, dtype=bool)
            for i in range(n):
                img = pending.popleft().result()
                if img is not None:
                    batch[i] = img
                    ok[i] = True
            top_up()
            yield batch, ok
