"""Faults that tests inject into Ray workers. Not a test module: the test cluster has tests/ on its PYTHONPATH and
a driver names a function here as its runtime_env's ``worker_process_setup_hook``, which Ray runs in every worker
process of that job before it starts work."""

from __future__ import annotations

import os


def die_once_on_image() -> None:
    """The first worker process, in the whole cluster, that decodes the image named ``$KK_FAULT_IMAGE`` dies on the
    spot (``os._exit``: what the kernel's OOM killer or a lost node look like to Ray); the file ``$KK_FAULT_MARKER``,
    created atomically, says it happened, so the restarted worker and every later one go on normally."""
    import kaggle_kit.images as images

    target, marker = os.environ["KK_FAULT_IMAGE"], os.environ["KK_FAULT_MARKER"]
    real = images.decode_image

    def decode_image(path, size):
        if os.path.basename(str(path)) == target:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)
        return real(path, size)

    images.decode_image = decode_image
