"""CURVE keys on the client side: where a home keeps them, loading them, making a context use them.

``pryxbus keys generate`` writes, under ``HOME/keys/``: the server keypair (``server.key``, public;
``server.key_secret``), a client keypair (``client.key``, ``client.key_secret``) and the allow-list
directory ``clients/`` holding the public keys of the clients the servers let in. A client needs
two files: its own ``client.key_secret`` (which holds its public key too) and the server's public
``server.key``. The options are set once on a context (``ctx.setsockopt``), so every socket the
SDK creates on it afterwards is a CURVE client and no hot path ever sees them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from sdk.errors import BusUnavailable

KEYS_DIR = "keys"
SERVER_KEY = "server.key"
CLIENT_KEY = "client.key"
SECRET_SUFFIX = "_secret"
ALLOW_DIR = "clients"
"""Under ``HOME/keys``: the public keys (``*.key``) of the clients the servers let in."""


def keys_dir(home: str | os.PathLike[str]) -> Path:
    return Path(home).expanduser() / KEYS_DIR


@dataclass(frozen=True)
class KeyPaths:
    """The two files a CURVE client needs: its own secret key file and the server's public key."""

    client_secret: Path
    """A ``.key_secret`` file (``zmq.auth`` format; it holds the public key too)."""
    server_public: Path
    """The server's public ``.key`` file."""

    @classmethod
    def for_home(cls, home: str | os.PathLike[str]) -> KeyPaths:
        d = keys_dir(home)
        return cls(d / (CLIENT_KEY + SECRET_SUFFIX), d / SERVER_KEY)

    def exist(self) -> bool:
        return self.client_secret.is_file() and self.server_public.is_file()


@dataclass(frozen=True)
class ClientKeys:
    """A loaded client keypair and the server public key it expects (z85 bytes)."""

    public: bytes
    secret: bytes
    server: bytes


def load_client(paths: KeyPaths) -> ClientKeys:
    """Read the key files.

    Raises:
        BusUnavailable: a file is missing or holds no key of the right kind.
    """
    try:
        public, secret = zmq.auth.load_certificate(paths.client_secret)
        server, _ = zmq.auth.load_certificate(paths.server_public)
    except (OSError, ValueError) as e:
        raise BusUnavailable(f"cannot load CURVE keys: {e}") from e
    if not secret:
        raise BusUnavailable(f"cannot load CURVE keys: {paths.client_secret} holds no secret key")
    return ClientKeys(public=public, secret=secret, server=server)


def resolve_client_keys(curve: bool | KeyPaths | ClientKeys | None, home: object) -> ClientKeys | None:
    """What ``sdk.connect(home, curve=...)`` means.

    ``None`` (auto): CURVE if ``home`` is a home directory (or None, the default home) holding
    ``keys/client.key_secret`` and ``keys/server.key``. ``False``: never. ``True``: the home's
    keys, which must exist. A :class:`KeyPaths`: those files (e.g. for a remote client).

    Raises:
        BusUnavailable: keys were asked for and cannot be loaded.
    """
    if curve is False:
        return None
    if isinstance(curve, ClientKeys):
        return curve
    if isinstance(curve, KeyPaths):
        return load_client(curve)
    if home is None:
        from schemas.endpoints import default_home

        home = default_home()
    is_home = isinstance(home, (str, os.PathLike)) and not str(home).startswith("tcp://")
    if not is_home:
        if curve is True:
            raise BusUnavailable("curve=True needs a home directory; give curve=KeyPaths(...) for tcp://")
        return None
    paths = KeyPaths.for_home(home)  # type: ignore[arg-type]
    if curve is None and not paths.exist():
        return None
    return load_client(paths)


def secure_client(sock: zmq.Socket, keys: ClientKeys) -> None:
    """Make one socket a CURVE client (before it connects)."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server


def secure_client_context(ctx: zmq.Context, keys: ClientKeys | None) -> zmq.Context:
    """Make every socket created on ``ctx`` from now on a CURVE client; returns ``ctx``."""
    if keys is not None:
        ctx.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        ctx.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        ctx.setsockopt(zmq.CURVE_SERVERKEY, keys.server)
    return ctx
