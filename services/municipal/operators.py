"""Operators of a municipal node: the login's store, roles and the service, wired
from the node's settings; and the enrolment of an operator on the node's host."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jukinet.audit import NodeLog, log_key_path, verifiers_path
from jukinet.clock import SYSTEM_CLOCK, Clock
from jukinet.config import MunicipalConfig
from jukinet.db import Database
from jukinet.errors import ConfigError
from jukinet.identity import Identity
from jukinet.login import CardTrust, OperatorStore
from jukinet.operators import Roles, enroll
from jukinet.passwords import make_hasher
from services.municipal import models

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""The municipal node's Alembic migrations."""


def card_trust(config: MunicipalConfig) -> CardTrust:
    """The root, its CRL and this municipality's operator CA, from ``card_trust``.

    ConfigError (one line) when they cannot be read.
    """
    where = config.card_trust_dir()
    try:
        return CardTrust.load(where, (config.local_government_code,))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"card_trust: {where}: cannot read the operator CA of "
            f"{config.local_government_code} ({exc})"
        ) from None


def operator_store(
    config: MunicipalConfig, db: Database, *, clock: Clock = SYSTEM_CLOCK
) -> OperatorStore:
    """The node's accounts, logins and sessions, with the policy of its settings."""
    return OperatorStore(
        db,
        models.operator_tables,
        card_trust(config),
        config.local_government_code,
        clock=clock,
        policy=config.login_policy(),
        hasher=make_hasher(
            time_cost=config.password_hash_time_cost,
            memory_kib=config.password_hash_memory_kib,
        ),
        reload_trust=lambda: CardTrust.load(
            config.card_trust_dir(), (config.local_government_code,)
        ),
    )


def granted_roles(config: MunicipalConfig, db: Database, *, clock: Clock = SYSTEM_CLOCK) -> Roles:
    """The roles granted at the node."""
    return Roles(db, models.operator_roles, config.local_government_code, clock)


async def enroll_operator(
    config: MunicipalConfig, operator_id: str, password: str, roles: Sequence[int]
) -> None:
    """Create an operator's account in the node's database, on its host (no gRPC).

    The first administrator comes this way (``jukinet operator enroll``).
    ``roles`` are ``jukinet.v1.Role`` values; ``password`` is the initial one,
    which must be changed at the first login. An existing operator id is
    refused (:class:`~jukinet.errors.AlreadyExists`), a weak password too
    (:class:`~jukinet.login.WeakPassword`). The database is brought to the
    node's newest schema first. The enrolment is an entry of the node's
    operation log (terminal ``host``).
    """
    await enroll_operators(config, [(operator_id, password, roles)])


async def enroll_operators(
    config: MunicipalConfig, operators: Sequence[tuple[str, str, Sequence[int]]]
) -> None:
    """:func:`enroll_operator` for each (operator id, password, roles) of ``operators``,
    in order, over one connection to the database (a local federation's staff)."""
    db = Database(config.database_url)
    try:
        await db.migrate(MIGRATIONS)
        log = NodeLog(
            identity=Identity.municipality(config.local_government_code),
            db=db,
            tables=models.oplog,
            audited={},
            clock=SYSTEM_CLOCK,
            log_key=log_key_path(config.log_key, config.tls.key),
            verifiers=verifiers_path(config.log_verifiers, config.tls.ca),
            interval=config.checkpoint_interval,
        )
        store, roles_granted = operator_store(config, db), granted_roles(config, db)
        for operator_id, password, roles in operators:
            await enroll(store, roles_granted, log.oplog, operator_id, password, roles)
    finally:
        await db.close()
