"""`python -m trainer_service keys ...`: mint, list and revoke API keys in a key file, so nobody hashes by hand.

    python -m trainer_service keys create --project team-a [--scope admin] [--description CI] --keys-file F
    python -m trainer_service keys list --keys-file F
    python -m trainer_service keys revoke --key-id 3f9a2c1b7d4e --keys-file F

`create` prints the new key once, on stdout, and writes only its id and SHA-256 to the file; a running trainer
picks the change up within --api-keys-reload-interval-s. The file is replaced atomically and kept mode 0600.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .keys import SCOPES, KeyFileError, mint_key, read_key_file, write_key_file


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer_service keys", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True, metavar="{create,list,revoke}")
    create = commands.add_parser("create", help="mint a key; prints it once")
    create.add_argument("--project", required=True, help="the project whose jobs and files the key reaches")
    create.add_argument("--scope", choices=SCOPES, default="project", help="admin: every project's (default: "
                        "its own project's only)")
    create.add_argument("--description", default="", help="a note kept with the key (who holds it)")
    create.set_defaults(run=_create)
    listing = commands.add_parser("list", help="the keys in the file (ids, projects, scopes; never a key)")
    listing.set_defaults(run=_list)
    revoke = commands.add_parser("revoke", help="mark a key revoked (kept in the file, refused by the trainer)")
    revoke.add_argument("--key-id", required=True)
    revoke.set_defaults(run=_revoke)
    for command in (create, listing, revoke):
        command.add_argument("--keys-file", type=Path, required=True, help="the JSON key file (--api-keys-file)")
    return parser


def _existing(path: Path) -> dict:
    return read_key_file(path) if path.exists() else {}


def _create(args) -> int:
    keys = _existing(args.keys_file)
    key, entry = mint_key(args.project, scope=args.scope, description=args.description)
    keys[entry.id] = entry
    write_key_file(args.keys_file, keys)
    print(key)
    print(f"key id {entry.id}, project {entry.project}, scope {entry.scope}: shown once, only its SHA-256 is in "
          f"{args.keys_file}; send it as 'authorization: Bearer <key>'", file=sys.stderr)
    return 0


def _list(args) -> int:
    for key in _existing(args.keys_file).values():
        state = "revoked" if key.revoked else "active"
        print(f"{key.id}\t{key.project}\t{key.scope}\t{state}\t{key.created_at}\t{key.description}")
    return 0


def _revoke(args) -> int:
    keys = _existing(args.keys_file)
    if args.key_id not in keys:
        raise KeyFileError(f"{args.keys_file}: no key id {args.key_id}")
    keys[args.key_id] = dataclasses.replace(keys[args.key_id], revoked=True)
    write_key_file(args.keys_file, keys)
    print(f"key {args.key_id} revoked", file=sys.stderr)
    return 0
