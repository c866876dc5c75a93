"""Tables of a prefecture node: the identity records of its municipalities'
residents, the codes it handed down, and the relay outbox to the national node."""

from sqlalchemy import MetaData

from jukinet.delivery.outbox import define_outbox
from jukinet.delivery.store import define_identity_tables
from jukinet.oplog.log import define_oplog_tables

metadata = MetaData()
identities = define_identity_tables(metadata)
# The node's operation log, and the heads it holds for the tier below.
oplog = define_oplog_tables(metadata)
outbox = define_outbox(metadata)
