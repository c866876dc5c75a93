"""Tables of a prefecture node: the identity records of its municipalities'
residents, the codes it handed down, and the relay outbox to the national node."""

from sqlalchemy import MetaData

from jukinet.delivery.outbox import define_outbox
from jukinet.delivery.store import define_identity_tables
from jukinet.oplog.log import define_oplog_tables
from jukinet.relay.store import define_directory_table

metadata = MetaData()
identities = define_identity_tables(metadata)
# The node's operation log, and the heads it holds for the tier below.
oplog = define_oplog_tables(metadata)
outbox = define_outbox(metadata)
# The newest relay directory this node verified (served to its municipalities as signed).
relay_directory = define_directory_table(metadata)
