"""Run ``kaggle-kit ARGS...`` in this process and append its peak resident memory (MiB) to $KK_RSS_FILE.

Used by the benchmarks: ``python bench/rss.py features --backbone ...``.
"""

import atexit
import os
import resource
import sys


def _report() -> None:
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    with open(os.environ["KK_RSS_FILE"], "a") as fh:
        fh.write(f"{peak_mib:.1f}\n")


atexit.register(_report)
from kaggle_kit.cli import app  # noqa: E402

app(args=sys.argv[1:], prog_name="kaggle-kit")
