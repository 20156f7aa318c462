"""The one place that imports Keras (and with it TensorFlow), quietly.

TensorFlow announces itself on stderr when it loads: "WARNING: All log messages before absl::InitializeLog()
is called are written to STDERR", then "oneDNN custom operations are on ..." (once per copy of the library, so
twice), and on some machines CPU-feature and CUDA-plugin lines. They would bury the kit's own messages.

subtle: ``TF_CPP_MIN_LOG_LEVEL`` hides the later C++ log lines but not these: they are written while the
libraries load, before TensorFlow reads it. ``TF_ENABLE_ONEDNN_OPTS=0`` would silence the oneDNN line only by
turning oneDNN off, which changes the numbers (and the speed) of every feature. So the import runs with file
descriptor 2 pointed at a temporary file, and whatever was written there goes back to stderr except those
known start-up lines: a real error during the import is still shown.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from types import ModuleType
from typing import Iterator

# Start-up lines of TensorFlow and absl that say nothing about the run (matched on whole lines).
STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard|cuda_\w+|cudart_stub|gpu_device|xla_bridge)\.cc:\d+\] .*"
    r"|To enable the following instructions: .*"
)


def is_startup_noise(line: str) -> bool:
    return STARTUP_NOISE.fullmatch(line.rstrip("\r\n")) is not None


@contextlib.contextmanager
def _startup_lines_dropped() -> Iterator[None]:
    """Collect what is written to file descriptor 2 inside the block; then write it back without the noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not is_startup_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def load_keras() -> ModuleType:
    """``import keras``, without TensorFlow's start-up lines; every module of the kit gets Keras from here.

    ``TF_CPP_MIN_LOG_LEVEL`` is set to 2 (errors only) unless the user set it.
    """
    if "keras" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with _startup_lines_dropped():
            import keras  # noqa: F401 - the one import of keras in the kit
    return sys.modules["keras"]
