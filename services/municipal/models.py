"""Tables of a municipal node: the resident register, the resident-code pool,
and the outbox of notifications to the prefecture."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)

from jukinet.delivery.outbox import define_outbox
from jukinet.login import define_challenge_table, define_operator_tables
from jukinet.operators import define_role_table
from jukinet.oplog.log import define_oplog_tables
from jukinet.relay.store import define_answer_table, define_directory_table
from jukinet.vocabulary import person_columns

metadata = MetaData()

residents = Table(
    "residents",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("resident_code", String(11), nullable=False, unique=True),
    # Key of the row in the register this one was migrated from (bulk import).
    Column("source_id", String(64), nullable=True, unique=True),
    *person_columns(),
    Column("household_id", String(32), nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("registered_on", String(10), nullable=False),
    Column("removed_on", String(10), nullable=False),
    Column("last_reason", SmallInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Register-only items: they never leave the municipal node.
    Column("relationship", SmallInteger, nullable=False, server_default="0"),  # 続柄
    Column("previous_address", String(200), nullable=False, server_default=""),  # 前住所
    Column("domicile", String(200), nullable=False, server_default=""),  # 本籍
    Column("domicile_head", String(100), nullable=False, server_default=""),  # 筆頭者
    # Why the current registration began (0: entered before it was kept).
    Column("entry_reason", SmallInteger, nullable=False, server_default="0"),
    Index("ix_residents_household", "household_id"),
)

# Households (世帯): the head and the address. A household exists while it has
# a current member; its head may have left (head_resident_id then points at a
# removed entry) or never have been recorded (NULL, households entered before).
households = Table(
    "households",
    metadata,
    Column("household_id", String(32), primary_key=True),
    Column("head_resident_id", BigInteger, nullable=True),
    Column("address", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Every change of a register entry, written in the transaction of the change:
# why (the change reason, or the register-only change), when it took effect,
# when and by whom it was recorded, and the fields it changed (JSON list of
# {field, before, after}). Removed entries keep theirs.
resident_events = Table(
    "resident_events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("resident_id", BigInteger, nullable=False),
    Column("resident_code", String(11), nullable=False),
    Column("reason", SmallInteger, nullable=False),
    Column("register_change", SmallInteger, nullable=False),
    Column("effective_date", String(10), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("operator", String(200), nullable=False),
    Column("changes", Text, nullable=False),
    Index("ix_resident_events_resident", "resident_id"),
)

# Codes a resident had before a code change, so the old code still finds them.
previous_codes = Table(
    "previous_codes",
    metadata,
    Column("resident_code", String(11), primary_key=True),
    Column("resident_id", BigInteger, nullable=False),
    Column("replaced_by", String(11), nullable=False),
    Column("changed_on", String(10), nullable=False),
)

code_pool = Table(
    "code_pool",
    metadata,
    Column("resident_code", String(11), primary_key=True),
    Column("request_id", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
    Index("ix_code_pool_free", "used_at"),
)

# Pool requests sent to the prefecture; an unfinished one is retried with the
# same id after a crash, so the codes it obtained are never lost.
pool_requests = Table(
    "pool_requests",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("fulfilled_at", DateTime(timezone=True), nullable=True),
)

# The move-out certificates this node issued (転出証明書): the certificate
# bytes as signed, so that a re-issue signs exactly the same contents again.
move_out_certificates = Table(
    "move_out_certificates",
    metadata,
    Column("certificate_number", String(64), primary_key=True),
    Column("resident_id", BigInteger, nullable=False),
    Column("resident_code", String(11), nullable=False),
    Column("move_out_sequence", BigInteger, nullable=False, unique=True),
    Column("certificate", LargeBinary, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    # The move-out made final (転出確定) by the new municipality's move-in notice:
    # the day here, by whom, and the move-in date it gave (NULL until then).
    Column("confirmed_on", String(10), nullable=True),
    Column("confirmed_by", String(6), nullable=True),
    Column("moved_in_on", String(10), nullable=True),
    Index("ix_move_out_certificates_resident", "resident_id"),
)

# The move-out certificates of other municipalities a move-in here rested on:
# each is used once (a re-issue keeps the number and the move-out sequence).
used_move_out_certificates = Table(
    "used_move_out_certificates",
    metadata,
    Column("certificate_number", String(64), primary_key=True),
    Column("issuing_local_government_code", String(6), nullable=False),
    Column("move_out_sequence", BigInteger, nullable=False),
    Column("resident_code", String(11), nullable=False),
    Column("move_in_sequence", BigInteger, nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=False),
    Index(
        "ix_used_move_out_certificates_origin",
        "issuing_local_government_code",
        "move_out_sequence",
        unique=True,
    ),
)

outbox = define_outbox(metadata)

# The node's operation log (its witnessed-heads table stays empty: no tier below).
oplog = define_oplog_tables(metadata)

# Operator accounts, login challenges, sessions, and the roles granted.
operator_tables = define_operator_tables(metadata)
operator_roles = define_role_table(metadata)

# The newest relay directory this node verified, and the answer given to each
# request relayed to it (a request id seen again gets the same answer).
relay_directory = define_directory_table(metadata)
relay_answers = define_answer_table(metadata)

# Requests to other municipalities written in the transaction of the change they
# follow (a move-in's notice to the old municipality), delivered by the notice
# sender until answered: ``pending``, then ``delivered`` or ``refused`` (kept,
# with the refusal's reason and message).
relay_outbox = Table(
    "relay_outbox",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("request_id", String(32), nullable=False, unique=True),
    Column("kind", SmallInteger, nullable=False),
    Column("destination", String(6), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("refusal_reason", String(64), nullable=False, server_default=""),
    Column("refusal_message", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Index("ix_relay_outbox_state", "state", "next_attempt_at"),
)
# The resident cards this node issued or continued (住民基本台帳カード), by the
# resident's row (a code change keeps the card). Status "valid", "revoked" or
# "lapsed"; the card CA's CRL is re-signed from the rows that are not valid.
# One valid card per resident: a partial unique index says so.
resident_cards = Table(
    "resident_cards",
    metadata,
    Column("card_id", String(32), primary_key=True),
    Column("serial", String(40), nullable=False, unique=True),
    Column("resident_id", BigInteger, nullable=False),
    Column("status", String(12), nullable=False),
    Column("issued_on", String(10), nullable=False),
    # The card's former URI when it was continued here after a move-in.
    Column("continued_from", String(120), nullable=False, server_default=""),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revocation_reason", String(32), nullable=False, server_default=""),
    Index("ix_resident_cards_resident", "resident_id"),
    Index(
        "ux_resident_cards_one_valid",
        "resident_id",
        unique=True,
        sqlite_where=text("status = 'valid'"),
        postgresql_where=text("status = 'valid'"),
    ),
)

# The challenges of resident cards' proofs of identity (single use, short-lived).
card_challenges = define_challenge_table(metadata, "card_challenges", "subject")

# Move-outs filed by post with a resident card's signature (付記転出届): the card
# that signed the filing, the certificate the move-out issued (kept for the new
# municipality to pull over the relay with the card), and the filing as signed.
# The card stays valid until the move-in notice makes the move-out final.
posted_move_outs = Table(
    "posted_move_outs",
    metadata,
    Column("certificate_number", String(64), primary_key=True),
    Column("card_id", String(32), nullable=False),
    Column("resident_id", BigInteger, nullable=False),
    Column("destination", String(6), nullable=False),
    Column("planned_on", String(10), nullable=False),
    Column("new_address", String(200), nullable=False),
    Column("filing", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("filed_at", DateTime(timezone=True), nullable=False),
    Index("ix_posted_move_outs_card", "card_id"),
)

# The copies of resident records this node's register answered (広域交付), for
# the residents' disclosure: who asked (the issuing municipality's operator and
# terminal), where (that municipality), when, and which entries the copy shows
# (copy_request_residents, by the residents' rows: a code change keeps them).
# One row per relayed request id: a request answered again is not counted twice.
copy_requests = Table(
    "copy_requests",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("request_id", String(32), nullable=False, unique=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("issuing_local_government_code", String(6), nullable=False),
    Column("operator", String(200), nullable=False),
    Column("terminal", String(200), nullable=False),
    Column("applicant_id", BigInteger, nullable=False),
    Column("applicant_code", String(11), nullable=False),
    # The resident card the applicant proved their identity with ("": a photo ID).
    Column("card_id", String(32), nullable=False, server_default=""),
    Column("relationship_shown", Boolean, nullable=False),
    Column("code_shown", Boolean, nullable=False),
)
copy_request_residents = Table(
    "copy_request_residents",
    metadata,
    Column("copy_id", BigInteger, primary_key=True),
    Column("resident_id", BigInteger, primary_key=True),
    Column("resident_code", String(11), nullable=False),
    Index("ix_copy_request_residents_resident", "resident_id"),
)
