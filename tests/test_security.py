"""Security basics (issue 6): ipc sockets live in a home only its owner can enter."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

from tests.conftest import start_part


def test_ipc_sockets_live_in_a_0700_home(xprocess) -> None:
    """A broker started on a fresh (or too open) home makes it 0700 before binding its sockets."""
    home = Path(tempfile.mkdtemp(prefix="pxb-", dir="/tmp"))
    home.chmod(0o755)  # an operator's too-open directory
    part = start_part(xprocess, home, "broker")
    try:
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for name in ("pub.sock", "sub.sock", "con.sock"):
            assert stat.S_ISSOCK((home / name).stat().st_mode), name
    finally:
        part.stop()
