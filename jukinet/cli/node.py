"""``jukinet run``: run a node from a config file."""

from __future__ import annotations

import argparse
from typing import Any


def register_cli(sub: Any) -> None:
    """Add ``run national | prefecture | municipal | gateway`` to the ``jukinet`` parser."""
    run = sub.add_parser("run", help="run a node from a config file")
    run.add_argument("tier", choices=["national", "prefecture", "municipal", "gateway"])
    run.add_argument("--config", help="TOML config file")

    def go(a: argparse.Namespace) -> int:
        from jukinet.config import MunicipalConfig, NationalConfig, PrefectureConfig
        from jukinet.noderun import run_node

        argv = ["--config", a.config] if a.config else []
        if a.tier == "national":
            from services.national.app import NationalApp

            return run_node("national", NationalConfig, NationalApp, argv)
        if a.tier == "prefecture":
            from services.prefecture.app import PrefectureApp

            return run_node("prefecture", PrefectureConfig, PrefectureApp, argv)
        if a.tier == "gateway":
            from gateway.app import GatewayApp
            from jukinet.config import GatewayConfig

            return run_node("gateway", GatewayConfig, GatewayApp, argv)
        from services.municipal.app import MunicipalApp

        return run_node("municipal", MunicipalConfig, MunicipalApp, argv)

    run.set_defaults(func=go)
