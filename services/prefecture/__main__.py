"""Run a prefecture node: ``python -m services.prefecture --config prefecture-31.toml``."""

from jukinet.config import PrefectureConfig
from jukinet.noderun import run_node
from services.prefecture.app import PrefectureApp

if __name__ == "__main__":
    raise SystemExit(run_node("prefecture", PrefectureConfig, PrefectureApp))
