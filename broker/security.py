"""CURVE on the server side: key generation, and the ZAP authenticator that fails closed.

With ``--curve`` every socket a server binds is a CURVE server, and a ZAP handler
(``zmq.auth.thread.ThreadAuthenticator``) lets in only the clients whose public key is in
``HOME/keys/clients/``. CURVE without a ZAP handler authenticates nobody (DESIGN.md §4.6), so the
server fails closed: it refuses to start without the allow-list or if the authenticator does not
run; its sockets carry a ZAP domain with ``ZAP_ENFORCE_DOMAIN``, so libzmq refuses every client
while no handler answers; and a watchdog ends the process should the authenticator ever stop.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from sdk.security import (
    ALLOW_DIR,
    CLIENT_KEY,
    SECRET_SUFFIX,
    SERVER_KEY,
    ClientKeys,
    KeyPaths,
    keys_dir,
    load_client,
)

log = logging.getLogger("pryxbus.security")
refusals = logging.getLogger("pryxbus.security.refused")

ZAP_DOMAIN = "pryxbus"
"""The ZAP domain of every CURVE server socket; the allow-list is configured for it."""
REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two log lines about refused connections (a scan must not flood the log)."""
WATCHDOG_INTERVAL = 0.2
"""Seconds between two looks at whether the authenticator thread still runs."""


class SecurityError(Exception):
    """CURVE cannot be set up as asked (missing keys or allow-list, authenticator not running)."""


# -- keys ------------------------------------------------------------------------------------


def generate(home: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Create the server and client keypairs and the allow-list under ``HOME/keys``.

    Files are 0600, directories 0700. Returns the files written.

    Raises:
        SecurityError: keys exist already and ``force`` is false.
    """
    d = keys_dir(home)
    allow = d / ALLOW_DIR
    names = [SERVER_KEY, SERVER_KEY + SECRET_SUFFIX, CLIENT_KEY, CLIENT_KEY + SECRET_SUFFIX]
    existing = [d / n for n in names if (d / n).exists()]
    if existing and not force:
        raise SecurityError(f"keys exist already ({', '.join(map(str, existing))}); use --force to replace them")
    old_umask = os.umask(0o077)
    try:
        for path in (Path(home).expanduser(), d, allow):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        for path in [*existing, allow / CLIENT_KEY]:  # --force: the old client key is let in no more
            path.unlink(missing_ok=True)
        written = []
        for stem in ("server", "client"):
            public, secret = zmq.auth.create_certificates(d, stem)
            written += [Path(public), Path(secret)]
        written.append(add_client(home, d / CLIENT_KEY))
        for path in written:
            os.chmod(path, 0o600)
    finally:
        os.umask(old_umask)
    return written


def add_client(home: str | os.PathLike[str], public_key_file: str | os.PathLike[str]) -> Path:
    """Copy a client's public key file into the allow-list; returns the new file (0600).

    Raises:
        SecurityError: the file holds no CURVE public key, or holds a secret key.
    """
    src = Path(public_key_file)
    try:
        public, secret = zmq.auth.load_certificate(src)
    except (OSError, ValueError) as e:
        raise SecurityError(f"{src}: not a CURVE public key file: {e}") from None
    if secret:
        raise SecurityError(f"{src} holds a secret key: give the public .key file")
    allow = keys_dir(home) / ALLOW_DIR
    allow.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(allow, 0o700)
    dest = allow / (src.name if src.name.endswith(".key") else src.name + ".key")
    if dest.exists() and zmq.auth.load_certificate(dest)[0] != public:
        dest = allow / f"{dest.stem}-{public[:8].decode('ascii', 'replace')}.key"
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o600)
    return dest


# -- serving ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerKeys:
    """What a ``--curve`` server needs, loaded from ``HOME/keys``."""

    public: bytes
    secret: bytes
    allow: Path
    """The allow-list directory."""
    client: ClientKeys
    """The home's client keypair, for the server's own connections to other parts (e.g. the log
    subscribing to the broker)."""

    @classmethod
    def load(cls, home: str | os.PathLike[str]) -> ServerKeys:
        """Load and check everything before anything binds.

        Raises:
            SecurityError: a key file or the allow-list directory is missing or unreadable.
        """
        d = keys_dir(home)
        allow = d / ALLOW_DIR
        hint = f"run 'pryxbus keys generate --home {Path(home)}'"
        if not allow.is_dir():
            raise SecurityError(f"--curve: the allow-list directory {allow} is missing; {hint}")
        try:
            public, secret = zmq.auth.load_certificate(d / (SERVER_KEY + SECRET_SUFFIX))
            client = load_client(KeyPaths.for_home(home))
        except Exception as e:  # OSError, ValueError, BusUnavailable
            raise SecurityError(f"--curve: cannot load the keys in {d}: {e}; {hint}") from None
        if not secret:
            raise SecurityError(f"--curve: {d / (SERVER_KEY + SECRET_SUFFIX)} holds no secret key")
        return cls(public=public, secret=secret, allow=allow, client=client)


def secure_server(sock: zmq.Socket, keys: ServerKeys) -> None:
    """Make one socket a CURVE server (before it binds); its clients are checked by ZAP.

    The socket has a ZAP domain and ``ZAP_ENFORCE_DOMAIN``, so libzmq itself refuses every
    client while no ZAP handler answers (without them, CURVE with no handler lets anyone in).
    """
    sock.zap_domain = ZAP_DOMAIN.encode()
    try:
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    except (AttributeError, zmq.ZMQError):  # an older libzmq: the watchdog still fails closed
        log.warning("this libzmq has no ZAP_ENFORCE_DOMAIN; relying on the authenticator watchdog")
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


@functools.cache
def _counting_authenticator() -> type:
    """The ZAP handler's class, made on first use: ``zmq.auth.thread`` imports asyncio, which a
    server without ``--curve`` has no use for (~30 ms of every start)."""
    from zmq.auth.thread import ThreadAuthenticator

    class _CountingAuthenticator(ThreadAuthenticator):
        """pyzmq's ZAP handler, counting and logging (rate-limited) the connections it refuses."""

        def __init__(self, ctx: zmq.Context, log: logging.Logger) -> None:
            super().__init__(ctx, log=log)
            self.refused = 0
            self._peer = "?"
            self._logged_at: float | None = None
            self._unlogged = 0

        def handle_zap_message(self, msg: list[bytes]) -> Any:
            # Sync in older pyzmq, a coroutine in newer: either way the reply follows for this peer.
            self._peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
            return super().handle_zap_message(msg)

        def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: str = "anonymous") -> None:
            if status_code != b"200":
                self.refused += 1
                now = time.monotonic()
                if self._logged_at is None or now - self._logged_at >= REFUSAL_LOG_INTERVAL:
                    more = f" (and {self._unlogged} more since the last such line)" if self._unlogged else ""
                    refusals.warning(
                        "refused a CURVE connection from %s: %s%s; %d refused in all",
                        self._peer or "?", status_text.decode("utf-8", "replace"), more, self.refused,
                    )
                    self._logged_at, self._unlogged = now, 0
                else:
                    self._unlogged += 1
            super()._send_zap_reply(request_id, status_code, status_text, user_id)

    return _CountingAuthenticator


class Authenticator:
    """The ZAP handler of one server context, started before anything binds; fails closed.

    ``close()`` stops it; should its thread die otherwise, the watchdog ends the process
    (``os._exit(70)``): libzmq would let every client in without a handler.
    """

    def __init__(self, ctx: zmq.Context, keys: ServerKeys) -> None:
        self._closing = threading.Event()
        self._auth = _counting_authenticator()(ctx, logging.getLogger("pryxbus.zap"))
        try:
            self._auth.start()
            # pyzmq only logs a directory it cannot read; the check in ServerKeys.load ran first.
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=str(keys.allow))
            listed = len(self._auth.certs.get(ZAP_DOMAIN, {}))
        except Exception as e:
            self._auth.stop()
            raise SecurityError(f"--curve: the authenticator did not start: {e}") from None
        if not self._auth.is_alive():
            self._auth.stop()
            raise SecurityError("--curve: the authenticator did not start")
        log.info("CURVE on: %d client key(s) allowed from %s", listed, keys.allow)
        self._watchdog = threading.Thread(target=self._watch, name="zap-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def refused(self) -> int:
        """Connections refused so far (a key not in the allow-list, or no CURVE at all)."""
        return self._auth.refused

    def _watch(self) -> None:
        while not self._closing.wait(WATCHDOG_INTERVAL):
            if not self._auth.is_alive():
                log.critical("the CURVE authenticator stopped; exiting rather than serve unauthenticated")
                os._exit(70)

    def close(self) -> None:
        """Stop the handler (call only while closing the server's sockets); idempotent."""
        self._closing.set()
        self._auth.stop()

    def __enter__(self) -> Authenticator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
