"""Run the national node: ``python -m services.national --config national.toml``."""

from jukinet.config import NationalConfig
from jukinet.noderun import run_node
from services.national.app import NationalApp

if __name__ == "__main__":
    raise SystemExit(run_node("national", NationalConfig, NationalApp))
