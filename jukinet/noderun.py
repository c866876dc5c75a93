"""The shared ``__main__`` of every node: parse arguments, load and check the
config, run until signalled; a bad config is one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import asyncio
import logging
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


def run_node(
    name: str, config_type: type[C], make_app: Callable[[C], App], argv: list[str] | None = None
) -> int:
    """Run node ``name`` from its config until signalled; the exit status."""
    parser = argparse.ArgumentParser(prog=f"jukinet {name}", description=f"Run a {name} node.")
    parser.add_argument("--config", help="TOML config file (JUKINET_* variables override it)")
    args = parser.parse_args(argv)
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
        # Load the local-government list (Japan Post data, about 1.5 s) before
        # serving: loaded lazily, it would block the event loop, and every
        # call and stream of the node, at the first code it checks.
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
