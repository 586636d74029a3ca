"""The operator commands' argument parsing: ``fedrec certs|store|submit``.

Plain argparse (not hydra): they take paths and names, not a config to compose; ``submit``
takes hydra overrides of ``configs/simulate.yaml`` and checks them itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

TOOLS: dict[str, str] = {
    "certs": "a CA, the SuperLink's TLS certificate and SuperNode auth keys",
    "store": "create or show a SuperNode's user store",
    "submit": "check overrides, submit a run to a SuperLink, exit non-zero unless it completed",
}


def _certs(args: argparse.Namespace) -> None:
    from fedrec.ops.certs import make_node_key, make_tls_files

    written = {
        name: str(path)
        for name, path in make_tls_files(
            args.folder, hosts=args.host or ["127.0.0.1", "localhost"], days=args.days
        ).items()
    }
    for node in args.node or []:
        private, public = make_node_key(args.folder, node)
        written[node], written[f"{node}.pub"] = str(private), str(public)
    print(json.dumps(written, indent=2))


def _store(args: argparse.Namespace) -> None:
    from fedrec.ops.stores import create_store, show_store

    if args.action == "create":
        if args.num_items is None:
            raise ValueError("fedrec store create needs --num-items (the catalog size)")
        consent = [c for c in (args.consent or "").split(",") if c]
        summary = create_store(
            args.path, num_items=args.num_items, interactions=args.interactions, consent=consent
        )
    else:
        summary = show_store(args.path)
    print(json.dumps(summary, indent=2))


def _submit(args: argparse.Namespace) -> None:
    from fedrec.ops.submit import submit

    status = submit(
        args.overrides,
        app=args.app,
        superlink=args.superlink,
        run_dir=args.run_dir,
        stream=not args.no_stream,
        timeout_s=args.timeout_s,
    )
    print(f"run {status['run-id']} {status['status']}; results in {status['run-dir']}")


def _parser(tool: str) -> tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], None]]:
    parser = argparse.ArgumentParser(prog=f"fedrec {tool}", description=TOOLS[tool])
    if tool == "certs":
        parser.add_argument("folder", help="where to write ca.crt, server.pem, server.key, ...")
        parser.add_argument("--host", action="append", help="SuperLink address (repeatable)")
        parser.add_argument("--days", type=int, default=365, help="validity (default 365)")
        parser.add_argument("--node", action="append", help="a SuperNode key to make (repeat)")
        return parser, _certs
    if tool == "store":
        parser.add_argument("action", choices=["create", "show"])
        parser.add_argument("path", help="the store file (node config store=<path>)")
        parser.add_argument("--num-items", type=int, help="catalog size (create)")
        parser.add_argument("--interactions", help="CSV: item,timestamp[,rating][,category]")
        parser.add_argument("--consent", help="categories the user agreed to, e.g. view,rating")
        return parser, _store
    parser.add_argument("overrides", nargs="*", help="hydra overrides of configs/simulate.yaml")
    parser.add_argument("--app", default=".", help="the Flower app folder (default .)")
    parser.add_argument("--superlink", help="the connection name in $FLWR_HOME/config.toml")
    parser.add_argument("--run-dir", help="results folder on the SuperLink's machine")
    parser.add_argument("--no-stream", action="store_true", help="do not stream the run's log")
    parser.add_argument("--timeout-s", type=float, help="give up waiting after this long")
    return parser, _submit


def run_tool(tool: str, argv: list[str]) -> None:
    """Run one operator command; an error is one line on stderr and exit status 2 (bad input)
    or 1 (the run failed)."""
    from fedrec.ops.submit import SubmitError

    parser, action = _parser(tool)
    args = parser.parse_args(argv)
    try:
        action(args)
    except SubmitError as err:
        print(f"fedrec {tool}: {err}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as err:
        print(f"fedrec {tool}: {err}", file=sys.stderr)
        sys.exit(2)
