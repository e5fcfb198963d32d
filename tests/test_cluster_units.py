"""Cluster pieces that need no cluster: tokens and keys, addresses, status text."""

from __future__ import annotations

import pytest
import zmq

from zray._private import security, services
from zray._private import status as status_text

pytestmark = pytest.mark.timeout(30)


def test_token_is_hex_of_fixed_size_and_random():
    a, b = security.new_token(), security.new_token()
    assert a != b and len(a) == 2 * security.TOKEN_BYTES
    assert security.check_token(f"  {a}\n") == a


@pytest.mark.parametrize("bad", ["", "abc", "zz" * security.TOKEN_BYTES, "ab" * 10])
def test_bad_tokens_are_named(bad):
    with pytest.raises(security.TokenError, match="hex digits"):
        security.check_token(bad)


def test_keys_derive_from_the_token_alone():
    token = security.new_token()
    k1, k2 = security.Keys(token), security.Keys(token)
    assert k1.server_public == k2.server_public and k1.peer_secret == k2.peer_secret
    other = security.Keys(security.new_token())
    assert other.server_public != k1.server_public
    assert k1.server_public != k1.peer_public
    assert zmq.curve_public(k1.server_secret) == k1.server_public


def _roundtrip(server_keys, client_keys, timeout_ms=1500):
    ctx = zmq.Context()
    guard = security.Guard(ctx, server_keys, "test server")
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server_keys.serve(server)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    if client_keys is not None:
        client_keys.join(client)
    client.connect(f"tcp://127.0.0.1:{port}")
    try:
        client.send(b"hello")
        if not server.poll(timeout_ms):
            return None
        return server.recv_multipart()[1]
    finally:
        client.close(0)
        server.close(0)
        guard.stop()
        ctx.term()


def test_curve_admits_a_peer_with_the_token():
    token = security.new_token()
    assert _roundtrip(security.Keys(token), security.Keys(token)) == b"hello"


def test_curve_refuses_a_wrong_token_and_a_plain_peer():
    keys = security.Keys(security.new_token())
    assert _roundtrip(keys, security.Keys(security.new_token())) is None
    assert _roundtrip(keys, None) is None


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:6380", ("127.0.0.1", 6380)),
    ("tcp://10.0.0.2:7000", ("10.0.0.2", 7000)),
    (" head.example:1 ", ("head.example", 1)),
])
def test_split_address(text, expected):
    assert services.split_address(text) == expected


@pytest.mark.parametrize("text", ["6380", "host:", ":80", "host:port", "host:70000"])
def test_split_address_rejects(text):
    with pytest.raises(services.ClusterError, match="HOST:PORT"):
        services.split_address(text)


def test_local_endpoints_match():
    assert services._same_endpoint("127.0.0.1:6380", "localhost:6380")
    assert not services._same_endpoint("127.0.0.1:6380", "127.0.0.1:6381")


def _reply():
    node = {"node_id": "aa" * 16, "alive": True, "node_ip": "127.0.0.1",
            "resources": {"CPU": 2.0, "alpha": 1.0}, "available": {"CPU": 0.5, "alpha": 1.0},
            "store_used": 1 << 20, "store_capacity": 1 << 30, "queued": 3, "running": 2,
            "actors": 1}
    dead = {"node_id": "bb" * 16, "alive": False, "node_ip": "10.0.0.9",
            "resources": {"CPU": 4.0}, "available": {"CPU": 4.0}, "store_used": 0,
            "store_capacity": 1 << 30, "queued": 0, "running": 0, "actors": 0}
    return {"nodes": [node, dead], "unplaced": ["needs_tpu"]}


def test_summary_counts_alive_nodes_only():
    s = status_text.summarize(_reply())
    assert s["alive_nodes"] == 1 and s["dead_nodes"] == 1
    assert s["resources"]["total"] == {"CPU": 2.0, "alpha": 1.0}
    assert s["resources"]["in_use"] == {"CPU": 1.5, "alpha": 0.0}
    assert s["tasks"] == {"pending": 4, "running": 2, "unplaceable": ["needs_tpu"]}
    assert s["actors_alive"] == 1
    assert s["object_store"] == {"used": 1 << 20, "capacity": 1 << 30}


def test_status_text_reads_at_a_glance():
    text = status_text.format_status(status_text.summarize(_reply()), "127.0.0.1:6380")
    assert text.startswith("zray cluster at 127.0.0.1:6380: 1 node(s) alive, 1 dead")
    assert "1.5/2 CPU" in text and "DEAD" in text and "10.0.0.9" in text
    assert "1.0 MiB/1.0 GiB object store" in text
    assert "Tasks: 2 running, 4 pending" in text and "needs_tpu" in text
    assert "Actors: 1 alive" in text


def test_a_too_long_session_root_is_named(monkeypatch):
    monkeypatch.setenv("ZRAY_TMPDIR", "/tmp/" + "d" * 80)
    with pytest.raises(ValueError, match="ZRAY_TMPDIR"):
        services.session_root()
