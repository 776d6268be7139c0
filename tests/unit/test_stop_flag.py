"""StopFlag: a duplicate SIGTERM (pod-wide kill: one direct, one forwarded by torchrun) is ignored; a deliberate
second interrupt exits at once."""

from __future__ import annotations

import os
import signal
import time

import pytest

from framework.train import StopFlag


@pytest.fixture
def flag() -> StopFlag:
    f = StopFlag(duplicate_window_s=0.5)
    f.install()
    yield f
    f.restore()


def test_duplicate_sigterm_is_ignored(flag: StopFlag) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # the copy torchrun forwards
    assert flag.signum == signal.SIGTERM  # still stopping at the next step boundary, not exiting


def test_ctrl_c_twice_exits_at_once(flag: StopFlag) -> None:
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(SystemExit) as e:
        os.kill(os.getpid(), signal.SIGINT)
    assert e.value.code == 130


def test_sigterm_again_after_the_window_exits(flag: StopFlag) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.6)
    with pytest.raises(SystemExit) as e:
        os.kill(os.getpid(), signal.SIGTERM)
    assert e.value.code == 143


def test_stop_sources_reach_the_flag() -> None:
    """A rank whose signals its launcher relays (Ray Train runs the loop off the main thread): train_step's
    all-reduce sees the request once a source reports it, and the source is not polled after that."""
    from framework import train

    reports = [0, 0, signal.SIGTERM]

    def source() -> int:
        return reports.pop(0)

    train.STOP_SOURCES.append(source)
    try:
        f = StopFlag()
        assert f.requested() == 0 and f.requested() == 0
        assert f.requested() == signal.SIGTERM and f.signum == signal.SIGTERM
        assert f.requested() == signal.SIGTERM and reports == []
    finally:
        train.STOP_SOURCES.remove(source)
    assert StopFlag().requested() == 0
