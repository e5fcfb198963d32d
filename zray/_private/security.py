"""The cluster secret and what it takes to speak over TCP.

``zray head`` makes one random token.  Both CURVE key pairs of the cluster
(the servers' and the peers') derive from it, so knowing the token is what
lets a node, a driver or ``zray status`` in:

* every TCP ROUTER and PUB socket is a CURVE server with the servers' key;
* every TCP DEALER and SUB socket is a CURVE client that must know the
  servers' public key (derived from the token) and present the peers' key,
  which a ``zmq.auth`` handler checks before the first message is delivered.

A peer without the token fails the handshake: its bytes never reach a
handler, let alone an unpickler.

Object bytes between nodes are the exception: CURVE's cipher runs at about
0.4 GiB/s here, a third of what loopback TCP carries, so the transfer
sockets use no handshake and :class:`Sealer` seals every frame instead, with
AES-256-GCM (AES-NI: several GiB/s) under a key derived from the token.  A
peer without the token can connect, but every frame it sends fails its tag
and is dropped unread; it cannot read or forge a frame.  Refusals are logged by the authenticator
and by the socket monitor (for peers that fail before the key check).
Local traffic (ipc, in a mode 0700 session directory) needs no token.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from typing import Optional

import zmq
from zmq.utils import z85

TOKEN_BYTES = 24

logger = logging.getLogger("zray.security")


class TokenError(ValueError):
    """A token that is not one ``zray head`` could have made."""


def new_token() -> str:
    return os.urandom(TOKEN_BYTES).hex()


def check_token(token: str) -> str:
    token = (token or "").strip()
    try:
        raw = bytes.fromhex(token)
    except ValueError:
        raw = b""
    if len(raw) != TOKEN_BYTES:
        raise TokenError(f"a zray token is {2 * TOKEN_BYTES} hex digits, as printed by "
                         f"`zray head`; got {len(token)} characters")
    return token


def _secret(token: str, role: bytes) -> bytes:
    return z85.encode(hashlib.sha256(b"zray curve " + role + bytes.fromhex(token)).digest())


class Keys:
    """Both key pairs of a cluster, derived from its token."""

    def __init__(self, token: str) -> None:
        token = self.token = check_token(token)
        self.server_secret = _secret(token, b"server")
        self.server_public = zmq.curve_public(self.server_secret)
        self.peer_secret = _secret(token, b"peer")
        self.peer_public = zmq.curve_public(self.peer_secret)

    def serve(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server; call before it binds."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.server_secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.server_public)

    def join(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of this cluster; call before it connects."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.peer_secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.peer_public)


class SealError(ValueError):
    """A sealed message that does not open: not made with this cluster's token,
    tampered with, or not sealed at all."""


class Sealer:
    """Authenticated encryption of whole messages (AES-256-GCM, key from the token).

    A sealed message is ``[nonce, *frames]``, each frame encrypted on its own
    (bulk frames are never joined into one buffer) under the nonce's prefix
    and its index, with the index and the number of frames as associated
    data: frames cannot be swapped, dropped or moved between messages.
    """

    _AAD = b"zray transfer"

    def __init__(self, token: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = hashlib.sha256(b"zray bulk " + bytes.fromhex(check_token(token))).digest()
        self.aead = AESGCM(key)

    def seal(self, frames: list) -> list:
        prefix = os.urandom(8)
        count = len(frames)
        return [prefix, *(self.aead.encrypt(self._nonce(prefix, i), frame, self._aad(i, count))
                          for i, frame in enumerate(frames))]

    def open(self, frames: list) -> list:
        """The frames of a sealed message (bytes), or SealError."""
        from cryptography.exceptions import InvalidTag

        if len(frames) < 2 or len(frames[0]) != 8:
            raise SealError(f"not a sealed message ({len(frames)} frames)")
        prefix, count = bytes(frames[0]), len(frames) - 1
        try:
            return [self.aead.decrypt(self._nonce(prefix, i), frame, self._aad(i, count))
                    for i, frame in enumerate(frames[1:])]
        except InvalidTag:
            raise SealError("a frame failed its check: not sealed with this cluster's "
                            "token, or altered on the way") from None

    @staticmethod
    def _nonce(prefix: bytes, index: int) -> bytes:
        return prefix + index.to_bytes(4, "big")

    @classmethod
    def _aad(cls, index: int, count: int) -> bytes:
        return cls._AAD + index.to_bytes(4, "big") + count.to_bytes(4, "big")


class _PeerKeyCheck:
    def __init__(self, allowed: bytes, where: str) -> None:
        self.allowed = allowed
        self.where = where

    def callback(self, domain: str, key: bytes) -> bool:
        # zmq.auth hands over the peer's public key Z85-encoded, as it holds ours.
        if key == self.allowed:
            return True
        logger.warning("%s refused a peer presenting an unknown CURVE key", self.where)
        return False


class Guard:
    """The ``zmq.auth`` handler of one process, and a watch for failed handshakes."""

    def __init__(self, ctx: zmq.Context, keys: Keys, where: str) -> None:
        self.where = where
        import zmq.auth.thread  # asyncio comes with it: only TCP clusters need it

        self.auth = zmq.auth.thread.ThreadAuthenticator(ctx, log=logger)
        self.auth.start()
        self.auth.configure_curve_callback(
            "*", credentials_provider=_PeerKeyCheck(keys.peer_public, where))
        self.monitors: list = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def watch(self, *socks: zmq.Socket) -> None:
        """Log handshakes that fail on ``socks`` (peers without the token); call once."""
        events = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        for sock in socks:
            self.monitors.append(sock.get_monitor_socket(events))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zray-guard", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        poller = zmq.Poller()
        for mon in self.monitors:
            poller.register(mon, zmq.POLLIN)
        while not self._stop.is_set():
            for mon, _ in poller.poll(200):
                try:
                    event = recv_monitor_message(mon, zmq.NOBLOCK)
                except (zmq.Again, zmq.ZMQError):
                    continue
                if event.get("event") == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                    continue  # a bare TCP connect and close (a port probe), nothing said
                self.refused += 1
                logger.warning("%s refused an unauthenticated peer at %s (handshake failed, "
                               "event %s, error %s)", self.where,
                               event.get("endpoint", b"?").decode(errors="replace"),
                               event.get("event"), event.get("value"))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1)
        for mon in self.monitors:
            mon.close(0)
        self.auth.stop()
