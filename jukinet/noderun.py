"""The shared ``__main__`` of every node: parse arguments, load and check the
config, run until signalled; a bad config is one line on stderr and exit 2.

``--parent-pid PID`` (Linux) ties the node to the process that started it:
the node asks the kernel for SIGTERM when its parent goes away
(``PR_SET_PDEATHSIG``) and exits at once if that parent is gone already. A
supervisor sets it here, in the node, rather than in the forked child before
``exec``: running Python between ``fork`` and ``exec`` (a ``preexec_fn``) in a
process that holds gRPC channels runs gRPC's fork handlers, which crash now
and then.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from jukinet import localgov
from jukinet.config import NodeConfig, load_config
from jukinet.errors import ConfigError
from jukinet.server import App, check_port_free, run_until_signalled

C = TypeVar("C", bound=NodeConfig)


def _only_upgrades(record: logging.LogRecord) -> bool:
    """Alembic's migration log without its set-up lines (context, DDL mode)."""
    message = str(record.msg)
    return not message.startswith(("Context impl", "Will assume"))


_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int) -> bool:
    """Have the kernel send this process SIGTERM when ``parent_pid``, its parent, exits.

    False when that cannot be arranged: not Linux, or ``parent_pid`` is not
    (or no longer) this process's parent; the caller then stops.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    # Checked after the request: a parent gone before it would send nothing,
    # and this process would already have been re-parented.
    return os.getppid() == parent_pid


def run_node(
    name: str, config_type: type[C], make_app: Callable[[C], App], argv: list[str] | None = None
) -> int:
    """Run node ``name`` from its config until signalled; the exit status."""
    parser = argparse.ArgumentParser(prog=f"jukinet {name}", description=f"Run a {name} node.")
    parser.add_argument("--config", help="TOML config file (JUKINET_* variables override it)")
    parser.add_argument(
        "--parent-pid",
        type=int,
        metavar="PID",
        help="Linux: stop (SIGTERM) when process PID, which started this node, exits",
    )
    args = parser.parse_args(argv)
    if args.parent_pid is not None and not exit_with_parent(args.parent_pid):
        print(
            f"jukinet {name}: --parent-pid {args.parent_pid}: not this node's parent "
            "(it has exited) or not supported here",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(config_type, args.config)
        logging.basicConfig(
            level=config.log_level.upper(),
            format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        )
        # Alembic announces each of its plugins and its DDL mode at INFO on
        # every start; only the migrations it runs are worth a line.
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
        logging.getLogger("alembic.runtime.migration").addFilter(_only_upgrades)
        # The SQLite driver logs every statement with its parameters (a
        # person's record) at DEBUG: never, whatever the node's level.
        logging.getLogger("aiosqlite").setLevel(logging.INFO)
        # Load the local-government list before serving (Japan Post data:
        # seconds to derive at the first start, a cached file after): loaded
        # lazily, it would block the event loop, and every call and stream of
        # the node, at the first code it checks.
        localgov.all_local_governments()
        # Before the database is touched: a second start of a running node
        # must not migrate (or lock) the first one's database, and a missing
        # certificate is found before any work is done.
        config.tls.load()
        check_port_free(config.listen)
        if config.metrics_listen:
            check_port_free(config.metrics_listen, setting="metrics_listen")
        app = make_app(config)
        asyncio.run(run_until_signalled(app, name))
    except ConfigError as exc:
        print(f"jukinet {name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
