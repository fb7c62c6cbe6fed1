"""``pryxbus keys generate|add``: the CURVE keys of a home and its allow-list of clients."""

from __future__ import annotations

import argparse
from pathlib import Path

from broker.security import SecurityError, add_client, generate
from schemas.endpoints import default_home
from sdk.cli.common import add_home, fail


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "keys",
        help="CURVE keys for --curve (generate, add a client to the allow-list)",
        description="CURVE keys live in HOME/keys: server.key(_secret), client.key(_secret) and the"
        " allow-list directory clients/ of public keys the servers let in.",
    )
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    g = sub.add_parser(
        "generate",
        help="create the server and client keypairs and the allow-list (files 0600, dirs 0700)",
        description="Create HOME/keys/server.key(_secret), HOME/keys/client.key(_secret) and the"
        " allow-list HOME/keys/clients/ holding the client's public key. Refuses to replace existing"
        " keys unless --force.",
    )
    add_home(g)
    g.add_argument("--force", action="store_true", help="replace existing keys")
    g.set_defaults(func=run_generate)

    a = sub.add_parser(
        "add",
        help="let a client in: copy its public key file into the allow-list",
        description="Copy PUBLIC_KEY_FILE (a client's public .key file) into HOME/keys/clients/."
        " Running --curve servers read the allow-list when they start: restart them.",
    )
    add_home(a)
    a.add_argument("public_key_file", metavar="PUBLIC_KEY_FILE", type=Path)
    a.set_defaults(func=run_add)


def run_generate(args: argparse.Namespace) -> int:
    home = args.home or default_home()
    try:
        written = generate(home, force=args.force)
    except SecurityError as e:
        return fail(str(e))
    except OSError as e:  # e.g. a read-only home
        return fail(f"cannot write keys in {home}: {e.strerror or e}")
    for path in written:
        print(path)
    return 0


def run_add(args: argparse.Namespace) -> int:
    home = args.home or default_home()
    try:
        dest = add_client(home, args.public_key_file)
    except SecurityError as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"cannot add the key to {home}: {e.strerror or e}")
    print(dest)
    return 0
