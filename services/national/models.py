"""Tables of the national node: the holdings (records, history, cursors, every
resident code ever issued)."""

from sqlalchemy import MetaData

from jukinet.holdings import define_holdings

metadata = MetaData()
holdings = define_holdings(metadata)
