"""The local stack's key material (state folder, mode 0600) and ``./switchyard keys``.

- ``key-pepper``: the server secret keys are hashed with (SWITCHYARD_KEY_PEPPER of the API),
  generated on the first start; losing it invalidates every key.
- ``dev-key``: a development key (tenant ``dev``, every scope including ``admin``), created on the
  first start and re-created if the database no longer knows it.
- ``payload-keys``: the keys Temporal payloads and sealed job input are encrypted with
  (SWITCHYARD_PAYLOAD_KEYS / SWITCHYARD_PAYLOAD_KEY_ID of every process), generated on the first
  start: ``{"active": <key id>, "keys": {<key id>: <base64>}}``. Rotate by adding a key, making it
  the active one and restarting; drop the old one once nothing encrypted with it is left.
- ``postgres-dsn``: the database the running stack uses (it may be an embedded one on a free port),
  so that ``./switchyard keys`` finds it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from switchyard.common.db.store import make_engine
from switchyard.common.keys import DEFAULT_SCOPES, SCOPES, TIERS, KeyStore
from switchyard.common.payload_codec import generate_key

PEPPER_FILE = "key-pepper"
PAYLOAD_KEYS_FILE = "payload-keys"
DEV_KEY_FILE = "dev-key"
DSN_FILE = "postgres-dsn"
DEV_TENANT = "dev"
DEV_SCOPES = SCOPES  # jobs, openai, v2, admin


def write_private(path: Path, value: str) -> None:
    """Write a secret file readable by its owner only (created 0600, never world-readable meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def read_private(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_pepper(state_dir: Path) -> str:
    """The stack's pepper, generated on first use."""
    path = state_dir / PEPPER_FILE
    pepper = read_private(path)
    if pepper is None:
        pepper = secrets.token_urlsafe(32)
        write_private(path, pepper)
    return pepper


def ensure_payload_keys(state_dir: Path) -> dict[str, str]:
    """The stack's payload encryption keys (generated on first use), as every process's environment."""
    path = state_dir / PAYLOAD_KEYS_FILE
    stored = read_private(path)
    if stored is None:
        kid = f"dev-{secrets.token_hex(4)}"
        stored = json.dumps({"active": kid, "keys": {kid: generate_key()}})
        write_private(path, stored)
    ring = json.loads(stored)
    return {"SWITCHYARD_PAYLOAD_KEYS": json.dumps(ring["keys"]), "SWITCHYARD_PAYLOAD_KEY_ID": ring["active"]}


async def create_key(dsn: str, pepper: str, tenant: str, scopes: Sequence[str] = DEFAULT_SCOPES, tier: str = "normal", name: str = "", *,
                     rps: float | None = None, max_streams: int | None = None, tpm: int | None = None) -> str:
    engine = make_engine(dsn)
    try:
        secret, _ = await KeyStore(engine, pepper).create(tenant, scopes, tier, name, rps=rps, max_streams=max_streams, tpm=tpm)
        return secret
    finally:
        await engine.dispose()


async def ensure_dev_key(dsn: str, pepper: str, state_dir: Path) -> str:
    """The development key of the state folder, created if missing or unknown to this database."""
    path = state_dir / DEV_KEY_FILE
    known = read_private(path)
    engine = make_engine(dsn)
    try:
        store = KeyStore(engine, pepper)
        if known is not None and await store.lookup(known) is not None:
            return known
        secret, _ = await store.create(DEV_TENANT, DEV_SCOPES, "normal", "development key (./switchyard up)")
    finally:
        await engine.dispose()
    write_private(path, secret)
    return secret


# ------------------------------------------------------------------ ./switchyard keys


def _store_args(args: argparse.Namespace) -> tuple[str, str]:
    state = Path(args.state_dir)
    dsn = args.postgres_dsn or read_private(state / DSN_FILE)
    pepper = read_private(state / PEPPER_FILE)
    if dsn is None or pepper is None:
        raise SystemExit(f"no local stack state in {state} (start it once with `./switchyard up`, or pass --state-dir)")
    return dsn, pepper


async def _run(args: argparse.Namespace) -> int:
    dsn, pepper = _store_args(args)
    engine = make_engine(dsn)
    try:
        store = KeyStore(engine, pepper)
        if args.keys_cmd == "create":
            try:
                secret, row = await store.create(args.tenant, [s.strip() for s in args.scopes.split(",") if s.strip()], args.tier, args.name,
                                                 rps=args.rps, max_streams=args.streams, tpm=args.tpm)
            except ValueError as e:
                print(f"switchyard keys: {e}", file=sys.stderr)
                return 2
            print(f"created key {row.id} (tenant {row.tenant}, scopes {','.join(row.scopes)}, tier {row.tier}); it is shown only this once:", file=sys.stderr)
            print(secret)  # alone on stdout: KEY=$(./switchyard keys create ...)
        elif args.keys_cmd == "list":
            rows = await store.list(args.tenant)
            print(f"{'id':<36}  {'tenant':<16} {'prefix':<10}  {'tier':<6} {'scopes':<22} {'limits (rps/streams/tpm)':<26} {'created':<19}  {'revoked':<19}  name")
            for r in rows:
                revoked = r.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if r.revoked_at else "-"
                limits = "/".join("tier" if v is None else f"{v:g}" for v in (r.rps, r.max_streams, r.tpm))
                print(f"{r.id!s:<36}  {r.tenant:<16} {r.prefix:<10}  {r.tier:<6} {','.join(r.scopes):<22} {limits:<26} {r.created_at:%Y-%m-%d %H:%M:%S}  {revoked:<19}  {r.name}")
        else:
            try:
                gone = await store.revoke(args.id)
            except ValueError:
                gone = None
            if gone is None:
                print(f"switchyard keys: no key {args.id}", file=sys.stderr)
                return 1
            print(f"revoked key {gone.id} (tenant {gone.tenant}); running API processes refuse it within 5 s")
        return 0
    finally:
        await engine.dispose()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys of the local platform")
    keys.add_argument("--state-dir", default=".state", help="the state folder of `./switchyard up` (default: .state)")
    keys.add_argument("--postgres-dsn", default=None, help="the database (default: the one the local platform uses)")
    ks = keys.add_subparsers(dest="keys_cmd", required=True)
    create = ks.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--scopes", default=",".join(DEFAULT_SCOPES), help=f"comma-separated, of {', '.join(SCOPES)} (default: {','.join(DEFAULT_SCOPES)})")
    create.add_argument("--tier", default="normal", choices=TIERS, help="priority cap (default: normal)")
    create.add_argument("--name", default="", help="a label for listings")
    create.add_argument("--rps", type=float, default=None, help="requests per second (default: the tier's)")
    create.add_argument("--streams", type=int, default=None, help="concurrent streams: SSE, WebSocket, streamed completions (default: the tier's)")
    create.add_argument("--tpm", type=int, default=None, help="LLM tokens per minute (default: the tier's)")
    lst = ks.add_parser("list", help="list keys (never their secrets)")
    lst.add_argument("--tenant", default=None)
    revoke = ks.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
