"""Python under libfaketime 0.9.10 (scripts/test_dates.sh puts this folder on PYTHONPATH).

The moved clock fakes CLOCK_REALTIME only (FAKETIME_DONT_FAKE_MONOTONIC=1): with a faked
monotonic clock, every timed wait on a lock or event that should time out waits for the whole
offset instead, because libfaketime does not translate sem_clockwait (libfaketime issue 469).
But with the real monotonic clock, libfaketime breaks clock_nanosleep(TIMER_ABSTIME), which
Python 3.11's time.sleep uses, so every sleep fails with EINVAL (libfaketime issue 426).
Here time.sleep waits with select(), whose timeout is relative and left alone.
"""

import os
import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


if "faketime" in os.environ.get("LD_PRELOAD", "") and os.environ.get(
    "FAKETIME_DONT_FAKE_MONOTONIC"
):
    time.sleep = _sleep
