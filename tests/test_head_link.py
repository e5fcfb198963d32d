"""Heartbeats both ways: a node agent notices a head that has gone silent,
keeps its own node working meanwhile, and sees the head come back."""

import os
import signal

import pytest
from waiting import eventually

import zray
from zray._private import protocol, state

pytestmark = pytest.mark.timeout(60)


@zray.remote
def one():
    return 1


def test_the_agent_notices_a_silent_head_and_hears_it_again():
    zray.init(num_cpus=1)
    try:
        head = zray._session.head
        session_dir = zray._session.session_dir
        assert eventually(lambda: state.client.query("head")["alive"], 5)
        os.kill(head.pid, signal.SIGSTOP)
        try:
            silent = protocol.HEARTBEAT_INTERVAL * protocol.HEARTBEAT_LIVENESS
            assert eventually(lambda: not state.client.query("head")["alive"], silent + 10)
            assert state.client.query("head")["silent_for"] > silent
            assert zray.get(one.remote(), timeout=30) == 1  # a single node needs no head
        finally:
            os.kill(head.pid, signal.SIGCONT)
        assert eventually(lambda: state.client.query("head")["alive"], 10)
        with open(os.path.join(session_dir, "logs", "node.log")) as log:
            text = log.read()
        assert "the zray head has not answered" in text and "answers again" in text
    finally:
        zray.shutdown()
