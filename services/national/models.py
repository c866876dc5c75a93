"""Tables of the national node: the identity records (records, history, cursors, every
resident code ever issued) and the provision records of what agencies received."""

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table

from jukinet.delivery.store import define_identity_tables
from jukinet.oplog.log import define_oplog_tables
from jukinet.relay.store import define_directory_table

metadata = MetaData()
identities = define_identity_tables(metadata)
# The node's operation log, and the heads it holds for the tier below.
oplog = define_oplog_tables(metadata)

# One row per answer given to an agency (and per refusal), written before the
# answer leaves. Kept 7 years, then purged.
provisions = Table(
    "provisions",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("provision_id", String(32), nullable=False, unique=True),
    Column("provided_at", DateTime(timezone=True), nullable=False),
    Column("agency_code", String(32), nullable=False),
    Column("purpose_code", String(64), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("resident_code", String(11), nullable=False),
    Column("fields", String(200), nullable=False),
    Column("result", String(16), nullable=False),
    Column("reason", String(64), nullable=False),
    # The index of the provision's entry in the node's operation log.
    Column("log_index", BigInteger, nullable=True),
    Index("ix_provisions_resident", "resident_code", "provided_at"),
    Index("ix_provisions_time", "provided_at"),
)

# The newest relay directory this node signed, and the digest of the file it was
# signed from.
relay_directory = define_directory_table(metadata)
