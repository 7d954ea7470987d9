"""The stop handlers: a signal raises its exception, is remembered, and the old handlers return."""

import os
import signal

import pytest

from fedhq_sim.interrupts import Terminated, raise_if_stopped, stop_signals


def test_a_stop_raises_is_remembered_until_the_handlers_are_taken_down():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_signals():
        raise_if_stopped()  # nothing asked yet
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Terminated):  # swallowed or not, the request stays
            raise_if_stopped()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    raise_if_stopped()  # forgotten once the run is over


def test_ctrl_c_is_a_keyboard_interrupt_and_the_first_signal_decides():
    with stop_signals():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            raise_if_stopped()
