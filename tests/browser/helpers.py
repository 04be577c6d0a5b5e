"""Plain helpers for the browser tests (fixtures stay in tests/browser/conftest.py)."""

import os
import re


def chromium_env() -> dict:
    """On a moved clock (scripts/test_dates.sh) Chromium moves its monotonic clock too.

    The suite keeps monotonic clocks real there (Python's timed waits need it), but then
    libfaketime 0.9.10 shifts the deadlines of Chromium's waits on monotonic condition
    variables by the whole offset: it spins or stalls. With both clocks moved it runs normally.
    """
    env = dict(os.environ)
    env.pop("FAKETIME_DONT_FAKE_MONOTONIC", None)
    return env


def link_in_mail(message, path_prefix: str) -> str:
    match = re.search(rf"https?://[^/\s]+{re.escape(path_prefix)}[^\s]+", message.body)
    assert match, message.body
    return match.group(0)
