"""Run a municipal node: ``python -m services.municipal --config municipality-312011.toml``."""

from jukinet.config import MunicipalConfig
from jukinet.noderun import run_node
from services.municipal.app import MunicipalApp

if __name__ == "__main__":
    raise SystemExit(run_node("municipal", MunicipalConfig, MunicipalApp))
