"""Queueing from a request while the broker is down (core/queueing.py)."""

import pytest
from kombu.exceptions import OperationalError

from core import queueing


class Task:
    """Stands in for a Celery task: records .delay() calls, fails while `broken`."""

    name = "tests.task"

    def __init__(self, error=None):
        self.calls = []
        self.error = error

    def delay(self, *args):
        self.calls.append(args)
        if self.error is not None:
            raise self.error


def test_a_queued_task_is_sent():
    task = Task()
    assert queueing.enqueue(task, 7, catch_up="a job") is True
    assert task.calls == [(7,)]


def test_after_a_broker_failure_the_next_calls_do_not_wait_for_it(monkeypatch):
    clock = iter([100.0, 101.0, 109.0, 111.0])
    monkeypatch.setattr(queueing, "_monotonic", lambda: next(clock))
    broken = Task(OperationalError("Error 111 connecting to redis"))

    assert queueing.enqueue(broken, 1, catch_up="a job") is False  # fails at t=100
    assert queueing.enqueue(broken, 2, catch_up="a job") is False  # t=101: not tried
    assert queueing.enqueue(broken, 3, catch_up="a job") is False  # t=109: not tried
    assert broken.calls == [(1,)]

    working = Task()
    assert queueing.enqueue(working, 4, catch_up="a job") is True  # t=111: tried again
    assert working.calls == [(4,)]


@pytest.mark.parametrize("error", [ValueError("task bug"), RuntimeError("eager task failed")])
def test_an_error_that_is_not_the_brokers_does_not_stop_later_calls(error):
    assert queueing.enqueue(Task(error), 1, catch_up="a job") is False
    working = Task()
    assert queueing.enqueue(working, 2, catch_up="a job") is True
    assert working.calls == [(2,)]
