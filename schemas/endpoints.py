"""Where a stack listens: the endpoint layout shared by the broker, the session service and the SDK.

A stack lives in a *home* directory (mode 0700). By default every part binds an ipc socket there;
with ``--tcp HOST:PORT`` the parts bind consecutive tcp ports from PORT instead (``HOST:0``: a port
of the system's choosing for each), and the stack writes ``endpoints.json`` in its home so that
clients given only the home find them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ENDPOINTS_FILE = "endpoints.json"

# Port offsets from the base port given with --tcp.
_TCP_OFFSETS = {"publish": 0, "subscribe": 1, "control": 2, "sessions": 3, "log": 4, "log_feed": 5}
_IPC_NAMES = {"log_feed": "logfeed"}  # the others: the first three letters of the name
IPC_PATH_MAX = 107
"""Longest ipc socket path in bytes (a sockaddr_un holds 108, with the terminating NUL)."""


class HomeNotOwned(PermissionError):
    """A home, or a file in it, that another user owns or can write: that user could replace its
    sockets (and capture every request) or read its databases. Refused, as ssh refuses ``~/.ssh``."""


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_owned(path: Path, what: str = "home", *, writable: bool = True) -> None:
    """Refuse ``path`` (if it exists) when neither we nor root own it, or (with ``writable``) a
    directory other users can write. Root's own files are trusted, as ssh trusts them.

    Raises:
        HomeNotOwned: with a message naming the owner and what to do.
    """
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        harm, remedy = (
            ("replace its sockets or read its files", "Use a directory of your own (--home or $PRYXBUS_HOME)")
            if path.is_dir() else ("read or change it", "Remove it, or use a home of your own")
        )
        raise HomeNotOwned(f"the {what} {path} belongs to {_user(info.st_uid)}, not to {_user(me)}: its owner could {harm}. {remedy}")
    if writable and path.is_dir() and info.st_mode & 0o022 and not info.st_mode & 0o1000:
        raise HomeNotOwned(
            f"the {what} {path} can be written by other users (mode {info.st_mode & 0o777:o}): they could"
            f" replace its sockets. Make it private (chmod 700 {path})"
        )


def default_home() -> Path:
    """``$PRYXBUS_HOME``, else ``$XDG_STATE_HOME/pryxbus``, else ``~/.local/state/pryxbus``."""
    env = os.environ.get("PRYXBUS_HOME")
    if env:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "pryxbus"


def ensure_home(home: str | os.PathLike[str] | None) -> Path:
    """Create the home directory if needed and make it private to its owner (0700).

    Raises:
        HomeNotOwned: the directory belongs to another user.
    """
    path = Path(home).expanduser() if home else default_home()
    path.mkdir(parents=True, exist_ok=True)
    check_owned(path, writable=False)  # root's chmod would succeed, yet the owner could still replace any file
    os.chmod(path, 0o700)
    return path


@dataclass(frozen=True)
class Endpoints:
    """The ZeroMQ endpoints of one stack."""

    publish: str
    """Broker XSUB: publishers connect here."""
    subscribe: str
    """Broker XPUB: subscribers connect here."""
    control: str
    """Broker ROUTER: health and stats requests."""
    sessions: str
    """Session service: REQ/REP session requests."""
    log: str = ""
    """Event log: REQ/REP replay and query requests (empty: a stack without a log)."""
    log_feed: str = ""
    """Broker XPUB again, with a deep per-connection queue: the event log subscribes here."""

    @classmethod
    def ipc(cls, home: str | os.PathLike[str]) -> Endpoints:
        """The ipc sockets in ``home``; raises ValueError if their paths are too long for a socket."""
        base = Path(home).expanduser().absolute()
        longest = base / "logfeed.sock"
        if len(os.fsencode(longest)) > IPC_PATH_MAX:
            raise ValueError(
                f"the home {base} is too long for ipc sockets ({longest} is {len(os.fsencode(longest))}"
                f" bytes; at most {IPC_PATH_MAX}): use a shorter home, or tcp"
            )
        return cls(**{name: f"ipc://{base / _IPC_NAMES.get(name, name[:3])}.sock" for name in _TCP_OFFSETS})

    @classmethod
    def tcp(cls, host: str, port: int) -> Endpoints:
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address, written as ZeroMQ endpoints (and URLs) need it
        return cls(**{name: f"tcp://{host}:{port + off if port else 0}" for name, off in _TCP_OFFSETS.items()})

    @property
    def ipv6(self) -> bool:
        """Whether these are tcp endpoints on an IPv6 address (ZeroMQ sockets need ``IPV6`` then)."""
        return self.publish.startswith("tcp://[")

    @classmethod
    def parse_tcp(cls, spec: str) -> Endpoints:
        """``HOST:PORT`` or ``tcp://HOST:PORT`` to endpoints; raises ValueError for anything else."""
        text = spec.removeprefix("tcp://")
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {spec!r}")
        if not 0 <= int(port) <= 65536 - len(_TCP_OFFSETS):  # the stack uses PORT and the ports after it
            raise ValueError(
                f"PORT must be 0 (any free ports) or from 1 to {65536 - len(_TCP_OFFSETS)} (the stack uses"
                f" PORT..PORT+{len(_TCP_OFFSETS) - 1}), got {spec!r}"
            )
        return cls.tcp(host, int(port))

    @property
    def unbound(self) -> list[str]:
        """The names of the endpoints on tcp port 0, whose port is known only once a part binds them."""
        return [name for name, e in asdict(self).items() if e.startswith("tcp://") and e.endswith(":0")]

    @classmethod
    def for_home(cls, home: str | os.PathLike[str] | None) -> Endpoints:
        """The endpoints of the stack in ``home``: its ``endpoints.json`` if any, else ipc.

        Raises:
            HomeNotOwned: ``home`` belongs to another user (see :func:`check_owned`).
        """
        path = Path(home).expanduser() if home else default_home()
        check_owned(path)
        try:
            data = json.loads((path / ENDPOINTS_FILE).read_text())
            return cls(**{k: data[k] for k in _TCP_OFFSETS if k in data or k not in ("log", "log_feed")})
        except (OSError, ValueError, KeyError, TypeError):
            return cls.ipc(path)

    @classmethod
    def resolve(cls, target: str | os.PathLike[str] | None) -> Endpoints:
        """A home directory, ``tcp://HOST:PORT``, or None (the default home) to endpoints."""
        if isinstance(target, str) and target.startswith("tcp://"):
            return cls.parse_tcp(target)
        return cls.for_home(target)

    def write(self, home: str | os.PathLike[str]) -> None:
        """Record these endpoints in ``home`` (atomically) for clients that know only the home."""
        path = Path(home) / ENDPOINTS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    def record(self, home: str | os.PathLike[str]) -> None:
        """Make ``home`` point its clients at these endpoints: tcp ones are written down; for the
        home's own ipc sockets (the default) an ``endpoints.json`` left by an earlier tcp run is
        removed, or clients and the event log would follow it to the old ports."""
        if any(e.startswith("tcp://") for e in asdict(self).values()):
            self.write(home)
        else:
            (Path(home) / ENDPOINTS_FILE).unlink(missing_ok=True)

    def record_chosen(self, home: str | os.PathLike[str], names: list[str]) -> None:
        """Write into ``home``'s ``endpoints.json`` the endpoints ``names`` (those a part bound on
        ports the system chose, ``--tcp HOST:0``), keeping the others the file names, if any."""
        if not names:
            return
        path = Path(home) / ENDPOINTS_FILE
        try:
            known = type(self)(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            known = self
        known.with_(**{name: getattr(self, name) for name in names}).write(home)

    def with_(self, **changes: str) -> Endpoints:
        return replace(self, **changes)

    def names(self) -> dict[str, str]:
        """Every endpoint by its name (``publish``, ..., ``log_feed``)."""
        return asdict(self)

    def ipc_paths(self) -> list[Path]:
        """The socket files these endpoints create (to clean up after a stop)."""
        return [Path(e[len("ipc://"):]) for e in asdict(self).values() if e.startswith("ipc://")]


ENDPOINT_NAMES = tuple(_TCP_OFFSETS)
"""The endpoints' names, as in ``endpoints.json`` and in the parts' ready lines."""
