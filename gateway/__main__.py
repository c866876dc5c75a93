"""Run the agency gateway: ``python -m gateway --config gateway.toml``."""

from gateway.app import GatewayApp
from jukinet.config import GatewayConfig
from jukinet.noderun import run_node

if __name__ == "__main__":
    raise SystemExit(run_node("gateway", GatewayConfig, GatewayApp))
