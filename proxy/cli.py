"""The `couchgate` command: `serve`, `dev`, and the tools later features add."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.audit import cli as audit_cli
from proxy.conflicts import cli as conflicts_cli
from proxy.importer import cli as import_cli
from proxy.server import run_server
from proxy.settings import SettingsError, load_settings


def serve(_: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"couchgate: {exc}", file=sys.stderr)
        return 2
    run_server(settings)
    return 0


def dev(args: argparse.Namespace) -> int:
    from proxy.devserver.run import run_dev

    code: int = run_dev(args.preset, args.port, args.backend_port, args.seed, args.on_disk, args.backend_dir)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="couchgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run couchgate against COUCHGATE_COUCH_URL").set_defaults(func=serve)
    p = sub.add_parser("dev", help="embedded backend + demo data + couchgate, for trying it out")
    p.add_argument("--preset", default="small", help="demo data size: tiny, small, 100k, 1m, or a doc count")
    p.add_argument("--port", type=int, default=5988)
    p.add_argument("--backend-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--on-disk", action="store_true", help="keep the backend's data on disk (else in memory)")
    p.add_argument(
        "--backend-dir", type=Path, default=None, help="the backend's directory (.couchgate/backend)"
    )
    p.set_defaults(func=dev)
    audit_cli.add_parser(sub)
    import_cli.add_parser(sub)
    conflicts_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
