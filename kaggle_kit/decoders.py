"""Where extraction gets its pixels: OpenCV on CPU threads (``opencv``, the default) or NVIDIA DALI on the GPU.

Both decoders give the same stream: ``(images, ok)`` batches in the order of the paths, images RGB uint8
(n, size, size, 3), ok bool (n,); an unreadable file is a zero image with ``ok = False`` (features.py then warns
with the file's name and keeps the row, as it always has). The last batch may be shorter.

``dali`` (``pip install 'kaggle-kit[dali]'``, an NVIDIA GPU): nvJPEG decodes the JPEGs on the GPU
(``fn.decoders.image(device='mixed')``) and ``fn.resize`` scales them there to (size, size), so the CPU
threads only read files. Rows and order are those of the OpenCV path; pixel values differ slightly:

- resizing: DALI has no area filter. When shrinking it uses a Gaussian filter with antialiasing, when
  enlarging linear (OpenCV: ``INTER_AREA`` / ``INTER_LINEAR``, images.resize_rgb). On 256 photos of the mini
  competition, DALI's CPU decoder (bytewise equal to OpenCV's decoding there) then differs from the OpenCV
  path by a mean |difference| of 0.43 (224 px), 0.48 (299 px), 0.47 (320 px) of 255 levels, 99th percentile
  4 levels; single pixels on sharp edges differ by up to about 100 levels where an image shrinks along one
  side and grows along the other (OpenCV's area filter copies pixels on the growing side there). Of the
  filters DALI offers, the Gaussian was the closest (linear with antialiasing: 0.71 mean at 224 px).
  Through EfficientNet-Lite0 (ImageNet weights, 320 px, 400 photos) the features are 3.7 % apart (median
  relative L2; cosine >= 0.996), and a head fit on OpenCV features scored 0.0132 log loss on OpenCV features,
  0.0128 on DALI's: the decoder is therefore part of the feature cache key.
- decoding: nvJPEG's inverse DCT and chroma upsampling are not libjpeg-turbo's; expect another difference of
  about one level per pixel (bench/gpu.py measures both on the GPU).
- files DALI cannot decode: a batch that DALI refuses (a corrupt file, a format nvImageCodec lacks) is
  decoded by the OpenCV path instead, file by file, so an unreadable file is judged exactly as there and the
  readable files of that batch get OpenCV's pixels.

Hand-off to the model: with Keras on JAX and JAX on the GPU, each batch goes from DALI's GPU buffer into a
JAX array through DLPack (a device-to-device copy, no trip through host memory): with Xception on an H200,
uint8 batches from the host ran at 4,670 img/s and batches already on the device at 6,120 (../shared/FACTS.md),
so the host round trip would cost a quarter of the model's speed. Other Keras backends get a numpy array
(``as_cpu()``). The first batch is checked against DALI's own host copy; a mismatch switches to numpy.
"""

from __future__ import annotations

import collections
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from kaggle_kit.artifacts import KitError

DECODERS = ("opencv", "dali")
DALI_EXTRA = "pip install 'kaggle-kit[dali]'"
_READ_AHEAD = 4  # batches of files read (and pre-checked) ahead of DALI
_MAX_FAILURES = 3  # DALI errors in a row on batches without an unreadable file before the run stops


def check_decoder(decoder: str) -> None:
    """Refuse an unknown decoder, or one this machine cannot run, with a one-line :class:`KitError`."""
    if decoder not in DECODERS:
        raise KitError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}", code=2)
    if decoder == "dali":
        _dali_gpu_count()


def _dali_gpu_count() -> int:
    """The number of CUDA devices DALI sees; a KitError when DALI is missing or sees none."""
    try:
        import nvidia.dali  # noqa: F401 - the package itself must import, not only its backend
        from nvidia.dali import backend
    except ImportError as exc:
        raise KitError(f"--decoder dali needs NVIDIA DALI, which is not installed ({exc}); run {DALI_EXTRA} "
                       "on a machine with an NVIDIA GPU, or use --decoder opencv", code=2) from None
    try:
        count = int(backend.GetCUDADeviceCount())
    except Exception:  # noqa: BLE001 - no driver or a broken one: DALI cannot use a GPU either way
        count = 0
    if count < 1:
        raise KitError("--decoder dali decodes on an NVIDIA GPU, and DALI sees none here (0 CUDA devices); "
                       "run it on a GPU machine, or use --decoder opencv", code=2)
    return count


def iter_batches(
    paths: Sequence[Path | str],
    *,
    decoder: str = "opencv",
    size: int,
    batch_size: int,
    workers: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, ok)`` batches in the order of ``paths`` from ``decoder`` (see the module docstring).

    ``workers``: OpenCV's decoder threads, or DALI's CPU threads (file reading, nvJPEG's host stages).
    """
    if decoder == "opencv":
        from kaggle_kit.images import iter_batches as opencv_batches

        yield from opencv_batches(paths, size=size, batch_size=batch_size, workers=workers)
        return
    check_decoder(decoder)
    yield from dali_batches(paths, size=size, batch_size=batch_size, workers=workers)


# ----------------------------------------------------------------------------------------------------- DALI
@dataclass(eq=False)
class _Chunk:
    """One output batch: its files, which passed the pre-check, their bytes, and (once known) its result."""

    paths: list
    ok: np.ndarray  # bool (n,): passed images.passes_precheck
    data: list = field(default_factory=list)  # the bytes (uint8 1-D arrays) of the files with ok True
    result: tuple | None = None


def _read_chunk(paths: list) -> _Chunk:
    from kaggle_kit.images import passes_precheck

    ok = np.zeros(len(paths), dtype=bool)
    data = []
    for i, path in enumerate(paths):
        try:
            raw = np.fromfile(str(path), dtype=np.uint8)
        except OSError:
            continue
        if passes_precheck(raw):
            ok[i] = True
            data.append(raw)
    return _Chunk(paths, ok, data)


def _opencv_chunk(chunk: _Chunk, size: int, pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray]:
    """The OpenCV path's answer for a whole chunk (used when DALI refuses it)."""
    from kaggle_kit.images import decode_image

    images = np.zeros((len(chunk.paths), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(chunk.paths), dtype=bool)
    for i, img in enumerate(pool.map(lambda p: decode_image(p, size), chunk.paths)):
        if img is not None:
            images[i], ok[i] = img, True
    return images, ok


def build_dali_pipeline(source: Callable[[], list], *, size: int, batch_size: int, threads: int, device: str = "gpu"):
    """A built DALI pipeline: encoded files from ``source`` -> decoded RGB -> resized to (size, size) uint8.

    ``device='gpu'`` is what extraction runs (nvJPEG, resize on the GPU); ``'cpu'`` runs the same graph on the
    CPU (libjpeg-turbo, no GPU needed): the tests check the graph, the order and the tolerance with it.
    ``source`` is called once per batch and returns a list of 1-D uint8 arrays (at most ``batch_size``); it
    raises StopIteration at the end. DALI calls it ahead of the outputs (two batches in flight).
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=0 if device == "gpu" else None,
                  prefetch_queue_depth=2)
    def pipeline():
        encoded = fn.external_source(source=source, batch=True, dtype=types.UINT8)
        images = fn.decoders.image(encoded, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)
        # subtle: min_filter acts along each axis that shrinks, mag_filter along each that grows (see the
        # module docstring for how close this is to OpenCV's area/linear choice).
        return fn.resize(images, resize_x=size, resize_y=size, min_filter=types.INTERP_GAUSSIAN,
                         mag_filter=types.INTERP_LINEAR, antialias=True)

    pipe = pipeline()
    pipe.build()
    return pipe


def dali_batches(
    paths: Sequence[Path | str],
    *,
    size: int,
    batch_size: int,
    workers: int | None = None,
    device: str = "gpu",
    handoff: str = "auto",
    build: Callable | None = None,
) -> Iterator[tuple[object, np.ndarray]]:
    """The DALI decoder: ``(images, ok)`` batches in the order of ``paths``, like images.iter_batches.

    ``images`` is a JAX array on the GPU (``handoff='jax'``) or a numpy array (``'numpy'``); ``'auto'`` picks
    JAX when Keras runs on JAX with a GPU. ``build`` makes the pipeline (default :func:`build_dali_pipeline`;
    tests pass the same graph on ``device='cpu'``).
    """
    paths = list(paths)
    if not paths:
        return
    threads = workers or max(1, os.cpu_count() or 1)
    if handoff == "auto":
        handoff = "jax" if device == "gpu" and _keras_on_jax_gpu() else "numpy"
    if build is None:
        def build(source):
            return build_dali_pipeline(source, size=size, batch_size=batch_size, threads=threads, device=device)

    starts = range(0, len(paths), batch_size)
    with ThreadPoolExecutor(max_workers=min(threads, _READ_AHEAD), thread_name_prefix="kk-read") as pool:
        reads: collections.deque[Future] = collections.deque()
        next_start = iter(starts)

        def top_up() -> None:
            while len(reads) < _READ_AHEAD:
                a = next(next_start, None)
                if a is None:
                    return
                reads.append(pool.submit(_read_chunk, paths[a:a + batch_size]))

        order: collections.deque[_Chunk] = collections.deque()  # every chunk read and not yet yielded
        todo: collections.deque[_Chunk] = collections.deque()  # chunks to hand to DALI (again, after an error)
        fed: collections.deque[_Chunk] = collections.deque()  # handed to DALI, output not yet taken

        def source() -> list:
            while not todo:
                top_up()
                if not reads:
                    raise StopIteration
                chunk = reads.popleft().result()
                order.append(chunk)
                if chunk.data:
                    todo.append(chunk)
                else:  # nothing decodable: DALI never sees it (an empty batch is not a batch)
                    chunk.result = (np.zeros((len(chunk.paths), size, size, 3), np.uint8), chunk.ok.copy())
            chunk = todo.popleft()
            fed.append(chunk)
            return chunk.data

        top_up()
        pipe = _build_or_explain(build, source)
        checked = False  # the first JAX hand-off is compared with DALI's host copy
        failures = 0  # DALI errors in a row: a systematic one (no GPU memory, a broken install) must stop the run
        while True:
            while order and order[0].result is not None:
                yield order.popleft().result
            try:
                (out,) = pipe.run()
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - DALI refused the oldest batch in flight: OpenCV decodes it
                head = fed.popleft()
                head.result = _opencv_chunk(head, size, pool)
                # subtle: a batch holding a file OpenCV cannot read either explains DALI's error; a run of
                # batches that OpenCV reads in full does not (no GPU memory, a broken install): stop then.
                failures = 0 if not head.result[1].all() else failures + 1
                if failures >= _MAX_FAILURES:
                    raise KitError(f"DALI failed on {failures} batches in a row that OpenCV reads ({_dali_reason(exc)})"
                                   "; use --decoder opencv") from None
                todo.extendleft(reversed(fed))  # the rest go again, in order, through a fresh pipeline
                fed.clear()
                del pipe
                pipe = _build_or_explain(build, source)
                continue
            failures = 0
            head = fed.popleft()
            use_jax = handoff == "jax" and head.ok.all()
            images = _to_jax(out) if use_jax else _to_host(out)
            if use_jax and not checked:
                checked = True
                if not np.array_equal(np.asarray(images), _to_host(out)):
                    warnings.warn("DALI -> JAX hand-off through DLPack gave other pixels than DALI's host copy; "
                                  "falling back to host copies (slower, same results)", RuntimeWarning, stacklevel=2)
                    handoff, images = "numpy", _to_host(out)
            if not head.ok.all():
                full = np.zeros((len(head.paths), size, size, 3), np.uint8)
                full[head.ok] = images
                images = full
            head.result = (images, head.ok.copy())
        while order:  # chunks with nothing decodable that came after DALI's last batch
            assert order[0].result is not None, "a batch fed to DALI came back without output"
            yield order.popleft().result


def _build_or_explain(build: Callable, source: Callable):
    try:
        return build(source)
    except Exception as exc:  # noqa: BLE001 - e.g. no GPU memory left, a CUDA/driver mismatch
        raise KitError(f"cannot start the DALI decoder ({_dali_reason(exc)}); use --decoder opencv") from None


def _dali_reason(exc: BaseException) -> str:
    """The informative line of a DALI error (it comes after 'encountered:', below a traceback of the graph)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if "encountered:" in lines[:-1]:
        return lines[lines.index("encountered:") + 1]
    lines = [line for line in lines if not line.startswith("Critical error in pipeline")]
    return lines[0] if lines else type(exc).__name__


def _to_host(out) -> np.ndarray:
    """DALI output (TensorListCPU or TensorListGPU) as a numpy array (n, size, size, 3)."""
    if hasattr(out, "as_cpu"):
        out = out.as_cpu()
    return np.asarray(out.as_array())


def _to_jax(out):
    """DALI TensorListGPU -> a JAX array on the same GPU, through DLPack, then copied on the device.

    subtle: DALI's ``__dlpack__`` makes JAX's stream wait for DALI's work; the copy makes the array JAX's own,
    so DALI may reuse its buffer whatever its execution model (about 30 us for a 256 x 299 x 299 x 3 batch).
    """
    import jax
    import jax.numpy as jnp

    return jnp.array(jax.dlpack.from_dlpack(out.as_tensor()), copy=True)


def _keras_on_jax_gpu() -> bool:
    try:
        from kaggle_kit.keras_loader import load_keras

        if load_keras().backend.backend() != "jax":
            return False
        import jax

        return jax.devices()[0].platform == "gpu"
    except Exception:  # noqa: BLE001 - any doubt: the numpy hand-off is always correct
        return False
