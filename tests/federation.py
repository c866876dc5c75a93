"""A whole federation inside the test process: real servers on 127.0.0.1 port 0,
real mTLS with certificates from the project's PKI, real databases (SQLite
files or fresh PostgreSQL databases)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509

from gateway.app import GatewayApp
from gateway.quotas import Clock
from jukinet import card, pki
from jukinet.cli import session as sessions
from jukinet.cli.main import main
from jukinet.client import log_in, tls_files
from jukinet.clock import SYSTEM_CLOCK
from jukinet.clock import Clock as WallClock
from jukinet.config import GatewayConfig, MunicipalConfig, NationalConfig, PrefectureConfig
from jukinet.identity import Identity
from jukinet.operators import enroll
from jukinet.purposes import PurposeRegistry
from jukinet.relay.directory import write_source
from jukinet.tls import secure_channel
from jukinet.v1 import (
    common_pb2,
    delivery_pb2,
    gateway_pb2_grpc,
    municipal_pb2,
    municipal_pb2_grpc,
    national_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    prefecture_pb2_grpc,
)
from services.municipal.app import MunicipalApp
from services.national.app import NationalApp
from services.prefecture.app import PrefectureApp
from tools.localfed import (
    PG_SERVER,
    municipal_sequences,
    national_cursors,
    wait_delivered,
)
from tools.localfed import (
    Databases as Databases,
)

# The PostgreSQL server the tests create their databases on (one variable for
# tests, demo and benchmark, read by tools.localfed).
PG_ADMIN_DSN = PG_SERVER

# --- operators at the counter: real SoftHSM2 cards -----------------------------------

COUNTER_OPERATOR = "counter"
"""The operator behind :meth:`Federation.operator`: clerk and supervisor, at desk1."""
COUNTER_ROLES = (operator_pb2.ROLE_CLERK, operator_pb2.ROLE_SUPERVISOR)
INITIAL_PASSWORD = "Initial-pass-0001"
"""What a test operator is enrolled with (to be changed at the first login)."""
PASSWORD = "Sakyu-Dunes-2026!"
"""What a test operator's password is after the first login."""
CARD_PIN = "246810"
CARD_SO_PIN = "so-135791"
TEST_LOGIN_SETTINGS: dict[str, Any] = {
    # Cheap Argon2id: a test logs in many times; the node's defaults are RFC 9106's.
    "password_hash_time_cost": 1,
    "password_hash_memory_kib": 64,
    # Long sessions: a test moving a node's clock forward keeps its operator's session.
    "session_idle": 3650 * 24 * 3600,
    "session_max": 3650 * 24 * 3600,
    "password_max_age_days": 36500,
}
"""Municipal settings of a test federation (a test overrides them to try the policy)."""

DIRECTORY_REFRESH = 1
"""Seconds between relay directory refreshes in a test federation (300 by default)."""
CARD_CRL_INTERVAL = 1
"""Seconds between resident card CRL exchanges in a test federation (each tier)."""

_hsm_lock = threading.Lock()


@contextlib.contextmanager
def activated(hsm: card.SoftHsm) -> Iterator[Any]:
    """``hsm`` as this process's card reader for a while, the previous one after."""
    with _hsm_lock:
        saved = os.environ.get("SOFTHSM2_CONF")
        lib = hsm.activate()
        try:
            yield lib
        finally:
            if saved is None:
                os.environ.pop("SOFTHSM2_CONF", None)
            else:
                os.environ["SOFTHSM2_CONF"] = saved
            card.rescan()


async def run_cli(
    capsys: pytest.CaptureFixture[str], hsm: card.SoftHsm, *argv: str
) -> tuple[int, str, str]:
    """``jukinet argv`` as a user runs it at a counter whose card reader is ``hsm``: its
    exit status, standard output and standard error."""

    def run() -> int:
        with activated(hsm):
            return main(list(argv))

    capsys.readouterr()
    status = await asyncio.to_thread(run)
    out, err = capsys.readouterr()
    return status, out, err


@dataclass
class TestCard:
    """One operator's card in the test session's reader (a :class:`jukinet.client.Signer`)."""

    hsm: card.SoftHsm
    label: str
    identity: Identity
    certificate: x509.Certificate

    def sign(self, data: bytes) -> bytes:
        """The card's signature of ``data`` (the card's own key, on the SoftHSM2 token)."""
        with activated(self.hsm) as lib, card.open_card(lib, CARD_PIN, label=self.label) as c:
            return c.sign(data)


@dataclass
class OperatorCards:
    """The test session's card reader: a SoftHSM2 token directory, a card per operator."""

    pki_dir: Path
    hsm: card.SoftHsm
    issued: dict[Identity, TestCard] = field(default_factory=dict)

    @classmethod
    def create(cls, pki_dir: Path, directory: Path) -> OperatorCards:
        """An empty reader in ``directory`` for cards of ``pki_dir``'s operator CAs."""
        return cls(pki_dir, card.SoftHsm.create(directory))

    def card(self, operator: Identity) -> TestCard:
        """``operator``'s card, provisioned by its organisation's operator CA the first time."""
        found = self.issued.get(operator)
        if found is not None:
            return found
        label = f"{operator.org}-{operator.operator_id}"[:32]
        with activated(self.hsm):
            self.hsm.init_token(label, CARD_SO_PIN, CARD_PIN)
        with activated(self.hsm) as lib:
            cert = card.provision_card(
                lib,
                CARD_PIN,
                lambda key: pki.issue_card_certificate(self.pki_dir, operator, key),
                label=label,
            )
        made = TestCard(self.hsm, label, operator, cert)
        self.issued[operator] = made
        return made


@dataclass
class OperatorSession:
    """An operator logged in at a counter terminal: stubs of both services, in session."""

    operator: Identity
    terminal: Identity
    token: str
    card: TestCard
    municipal: municipal_pb2_grpc.MunicipalServiceAsyncStub
    operators: operator_pb2_grpc.OperatorServiceAsyncStub
    channel: grpc.aio.Channel


@dataclass
class Federation:
    """Running nodes and operator channels to each."""

    pki_dir: Path
    databases: Databases
    national: NationalApp | None = None
    national_port: int = 0
    prefectures: dict[str, PrefectureApp] = field(default_factory=dict)
    prefecture_ports: dict[str, int] = field(default_factory=dict)
    municipalities: dict[str, MunicipalApp] = field(default_factory=dict)
    municipal_ports: dict[str, int] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    gateway: GatewayApp | None = None
    gateway_port: int = 0
    cards: OperatorCards | None = None
    # The session token of each municipality's counter operator (at desk1).
    sessions: dict[str, str] = field(default_factory=dict)
    enrolled: set[Identity] = field(default_factory=set)

    @property
    def directory_file(self) -> Path:
        """The relay directory file the national node signs: the nodes running, their ports."""
        return self.databases.folder / "directory.toml"

    async def publish_directory(self) -> None:
        """Write the directory file with every prefecture and municipality started so far
        and have the national node sign it now (it re-reads it when it changes)."""
        nodes = [
            (
                Identity.prefecture(code),
                f"127.0.0.1:{port}",
                self.pki_dir / f"prefecture-{code}.pem",
            )
            for code, port in sorted(self.prefecture_ports.items())
        ] + [
            (
                Identity.municipality(code),
                f"127.0.0.1:{port}",
                self.pki_dir / f"municipality-{code}.pem",
            )
            for code, port in sorted(self.municipal_ports.items())
        ]
        write_source(self.directory_file, nodes)
        if self.national is None or not self.national_running:
            return
        await self.national.directory.refresh()
        # Every node holds it before the test goes on: nothing is written by the
        # background refresh afterwards (tests compare whole databases).
        keepers = [p.directory for p in self.prefectures.values()]
        keepers += [m.directory for m in self.municipalities.values()]
        for keeper in keepers:
            with contextlib.suppress(Exception):  # a node a test stopped
                await keeper.refresh()

    national_running: bool = False

    def channel(self, port: int, cert_name: str, *, session: str | None = None) -> grpc.aio.Channel:
        """A mutual-TLS channel to ``port`` as ``cert_name`` (with a session token),
        closed by :meth:`stop`."""
        ch = secure_channel(
            f"127.0.0.1:{port}", tls_files(self.pki_dir, cert_name), session=session
        )
        self.channels.append(ch)
        return ch

    def terminal_channel(
        self, code: str, terminal: str = "desk1", *, session: str | None = None
    ) -> grpc.aio.Channel:
        """A channel to municipality ``code`` from its counter terminal ``terminal``."""
        return self.channel(
            self.municipal_ports[code], f"terminal-{code}-{terminal}", session=session
        )

    def operator(self, code: str) -> municipal_pb2_grpc.MunicipalServiceAsyncStub:
        """Municipality ``code``'s service, from its terminal desk1, in the session of its
        counter operator (clerk and supervisor, logged in with a card)."""
        if code not in self.sessions:
            raise RuntimeError(
                f"no counter operator is logged in at {code}: the federation has no cards"
            )
        return municipal_pb2_grpc.MunicipalServiceStub(
            self.terminal_channel(code, session=self.sessions[code])
        )

    def card(self, operator: Identity) -> TestCard:
        """``operator``'s card in the session's reader (provisioned the first time)."""
        assert self.cards is not None, "the federation has no card reader"
        return self.cards.card(operator)

    async def enroll(self, code: str, operator_id: str, roles: Sequence[int]) -> Identity:
        """Enroll an operator into municipality ``code``'s node (on its host), once."""
        operator = Identity.operator(code, operator_id)
        if operator not in self.enrolled:
            # What `jukinet operator enroll` does on the host, through the running
            # node's own store and log (the host command opens the database itself).
            app = self.municipalities[code]
            await enroll(
                app.operators, app.roles, app.log.oplog, operator_id, INITIAL_PASSWORD, roles
            )
            self.enrolled.add(operator)
        return operator

    async def log_in(
        self, code: str, operator_id: str, *, terminal: str = "desk1", first: bool = True
    ) -> operator_pb2.LoginResponse:
        """Log ``operator_id`` in at ``terminal`` with their card (changing the initial
        password at the ``first`` login)."""
        assert self.cards is not None, "the federation has no card reader"
        signer = self.cards.card(Identity.operator(code, operator_id))
        ch = self.terminal_channel(code, terminal)
        if first:
            return await log_in(ch, signer, INITIAL_PASSWORD, new_password=PASSWORD)
        return await log_in(ch, signer, PASSWORD)

    async def session(
        self,
        code: str,
        roles: Sequence[int],
        *,
        terminal: str = "desk1",
        operator_id: str | None = None,
        first: bool | None = None,
    ) -> OperatorSession:
        """An operator of ``code`` holding ``roles`` (enrolled if new), logged in at
        ``terminal`` with their card: stubs of both services in that session.

        The first login changes the initial password (``first``: by default,
        whether this call enrolled the operator)."""
        if operator_id is None:
            names = sorted(
                operator_pb2.Role.Name(operator_pb2.Role.ValueType(r)).removeprefix("ROLE_").lower()
                for r in roles
            )
            operator_id = "-".join(names) or "none"
        operator = Identity.operator(code, operator_id)
        if first is None:
            first = operator not in self.enrolled
        await self.enroll(code, operator_id, roles)
        response = await self.log_in(code, operator_id, terminal=terminal, first=first)
        ch = self.terminal_channel(code, terminal, session=response.session_token)
        assert self.cards is not None
        return OperatorSession(
            operator=operator,
            terminal=Identity.terminal(code, terminal),
            token=response.session_token,
            card=self.cards.card(operator),
            municipal=municipal_pb2_grpc.MunicipalServiceStub(ch),
            operators=operator_pb2_grpc.OperatorServiceStub(ch),
            channel=ch,
        )

    def prefecture_operator(self, code: str) -> prefecture_pb2_grpc.PrefectureServiceAsyncStub:
        """Prefecture ``code``'s service, as its administrator."""
        ch = self.channel(self.prefecture_ports[code], f"operator-{code}-admin")
        return prefecture_pb2_grpc.PrefectureServiceStub(ch)

    def national_operator(self) -> national_pb2_grpc.NationalServiceAsyncStub:
        """The national service, as its administrator."""
        ch = self.channel(self.national_port, "operator-national-admin")
        return national_pb2_grpc.NationalServiceStub(ch)

    def agency(self, code: str) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
        """The gateway, as agency ``code`` (certificate ``agency-<code>``)."""
        return self.gateway_as(f"agency-{code}")

    def gateway_as(self, cert_name: str) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
        """The gateway, presenting any certificate of the PKI."""
        return gateway_pb2_grpc.GatewayServiceStub(self.channel(self.gateway_port, cert_name))

    async def start_gateway(
        self,
        *,
        purposes: Path | None = None,
        registry: PurposeRegistry | None = None,
        clock: Clock | None = None,
        batch_pipeline: int = 2,
    ) -> int:
        """Start the agency gateway in front of the national node (one per federation)."""
        if self.gateway is not None:
            raise RuntimeError("the gateway is already running")
        if purposes is not None or registry is not None:
            # The national node checks every provision against the same
            # registry: restart it with the gateway's.
            if self.national is not None:
                await self.national.stop()
            await self.start_national(purposes=purposes, registry=registry)
        config = GatewayConfig(
            listen="127.0.0.1:0",
            tls=self._tls("gateway"),
            national_target=f"127.0.0.1:{self.national_port}",
            purposes=str(purposes) if purposes is not None else "",
            batch_pipeline=batch_pipeline,
            denial_spool=str(self.databases.folder / "gateway-denials.jsonl"),
        )
        self.gateway = GatewayApp(config, registry=registry, clock=clock or time.monotonic)
        self.gateway_port = await self.gateway.start()
        return self.gateway_port

    async def stop_gateway(self) -> None:
        """Stop the gateway, if it runs."""
        if self.gateway is not None:
            await self.gateway.stop()
            self.gateway = None

    async def start_national(
        self,
        *,
        purposes: Path | None = None,
        registry: PurposeRegistry | None = None,
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        """Start the national node (on its former port after a restart), on ``clock``."""
        if not self.directory_file.exists():
            write_source(self.directory_file, [])
        config = NationalConfig(
            listen=f"127.0.0.1:{self.national_port}",
            database_url=await self._url("national"),
            tls=self._tls("national"),
            purposes=str(purposes) if purposes is not None else "",
            directory=str(self.directory_file),
            directory_refresh_interval=DIRECTORY_REFRESH,
        )
        self.national = NationalApp(config, registry=registry, clock=clock)
        self.national_port = await self.national.start()
        self.national_running = True

    async def stop_national(self) -> None:
        """Stop the national node (:meth:`start_national` starts it again)."""
        if self.national is not None and self.national_running:
            await self.national.stop()
        self.national_running = False

    async def start_prefecture(
        self, code: str, port: int = 0, *, clock: WallClock = SYSTEM_CLOCK
    ) -> None:
        """Start prefecture ``code`` (on its former port after a restart), on ``clock``."""
        config = PrefectureConfig(
            listen=f"127.0.0.1:{port or self.prefecture_ports.get(code, 0)}",
            database_url=await self._url(f"prefecture-{code}"),
            tls=self._tls(f"prefecture-{code}"),
            prefecture_code=code,
            national_target=f"127.0.0.1:{self.national_port}",
            push_batch_size=200,
            directory_refresh_interval=DIRECTORY_REFRESH,
            card_crl_interval=CARD_CRL_INTERVAL,
        )
        app = PrefectureApp(config, clock=clock)
        self.prefectures[code] = app
        self.prefecture_ports[code] = await app.start()
        await self.publish_directory()

    async def start_municipality(
        self, code: str, *, clock: WallClock = SYSTEM_CLOCK, **overrides: Any
    ) -> None:
        """Start municipality ``code`` on ``clock``; ``overrides`` change its config."""
        settings: dict[str, Any] = {
            **TEST_LOGIN_SETTINGS,
            "pool_low_watermark": 20,
            "pool_refill_size": 100,
            "push_batch_size": 200,
            "card_crl_interval": CARD_CRL_INTERVAL,
            "prefecture_target": f"127.0.0.1:{self.prefecture_ports[code[:2]]}",
            "directory_refresh_interval": DIRECTORY_REFRESH,
        }
        settings.update(overrides)
        config = MunicipalConfig(
            # On its former port after a restart: the directory lists it there.
            listen=f"127.0.0.1:{self.municipal_ports.get(code, 0)}",
            database_url=await self._url(f"municipality-{code}"),
            tls=self._tls(f"municipality-{code}"),
            local_government_code=code,
            **settings,
        )
        app = MunicipalApp(config, clock=clock)
        self.municipalities[code] = app
        self.municipal_ports[code] = await app.start()
        await self.publish_directory()
        if self.cards is not None and code not in self.sessions:
            first = Identity.operator(code, COUNTER_OPERATOR) not in self.enrolled
            await self.enroll(code, COUNTER_OPERATOR, COUNTER_ROLES)
            response = await self.log_in(code, COUNTER_OPERATOR, first=first)
            self.sessions[code] = response.session_token

    _urls: dict[str, str] = field(default_factory=dict)

    async def _url(self, node: str) -> str:
        # A restarted node gets its own database back.
        if node not in self._urls:
            self._urls[node] = await self.databases.url(node)
        return self._urls[node]

    def _tls(self, name: str) -> Any:
        return tls_files(self.pki_dir, name)

    async def stop(self) -> None:
        """Close every channel, then stop the gateway and the nodes, national last."""
        for ch in self.channels:
            await ch.close(grace=None)
        await self.stop_gateway()
        for m in self.municipalities.values():
            await m.stop()
        for p in self.prefectures.values():
            await p.stop()
        await self.stop_national()

    async def wait_delivered(self, within: float = 30.0) -> None:
        """Until the national node has applied every municipal notification."""
        await wait_delivered(
            municipal_sequences({code: self.operator(code) for code in self.municipalities}),
            national_cursors(self.national_operator()),
            within=within,
        )


def issue_certificates(
    pki_dir: Path, municipalities: list[str], agencies: Sequence[str] = ()
) -> None:
    """Issue a federation PKI into ``pki_dir``, operators included."""
    pki.issue_federation(
        pki_dir,
        pki.FederationSpec(
            municipalities=municipalities,
            agencies=list(agencies),
            operators=True,
            prefectures=["13", "31"],
        ),
    )


async def federation(
    tmp: Path,
    backend: str,
    municipalities: list[str],
    pki_dir: Path,
    cards: OperatorCards | None = None,
) -> AsyncIterator[Federation]:
    """Start a federation for ``municipalities`` and their prefectures; stop and drop it after.

    With ``cards`` each municipality gets its counter operator, logged in at desk1
    (:meth:`Federation.operator`)."""
    dbs = Databases(backend, tmp)
    fed = Federation(pki_dir=pki_dir, databases=dbs, cards=cards)
    prefectures = sorted({m[:2] for m in municipalities})
    try:
        # Every node's database first, side by side: a PostgreSQL CREATE DATABASE
        # mostly waits on the disk. The nodes then start one by one (each runs
        # its migrations at start, and Alembic's context is one per process).
        nodes = [
            "national",
            *(f"prefecture-{p}" for p in prefectures),
            *(f"municipality-{m}" for m in municipalities),
        ]
        fed._urls.update(await dbs.urls(nodes))
        await fed.start_national()
        for pref in prefectures:
            await fed.start_prefecture(pref)
        for m in municipalities:
            await fed.start_municipality(m)
        yield fed
    finally:
        await fed.stop()
        await dbs.drop_all()


PersonFactory = Callable[..., municipal_pb2.PersonDetails]

MOVE_TIMEOUT = 15


async def move_out(
    fed: Federation, code: str, old: str, new: str, *, effective_date: str
) -> common_pb2.SignedMoveOutCertificate:
    """Move ``code`` out of ``old`` towards ``new``; returns the move-out certificate."""
    out = await fed.operator(old).MoveOut(
        municipal_pb2.MoveOutRequest(
            resident_code=code,
            destination_local_government_code=new,
            effective_date=effective_date,
        ),
        timeout=MOVE_TIMEOUT,
    )
    assert out.HasField("certificate"), out
    return out.certificate


async def move_in(
    fed: Federation,
    certificate: common_pb2.SignedMoveOutCertificate,
    new: str,
    *,
    address: str,
    effective_date: str,
    person: municipal_pb2.PersonDetails | None = None,
    household_id: str = "",
) -> municipal_pb2.MoveInResponse:
    """The move-in at ``new`` that rests on ``certificate``: the identity items
    come from it, the operator gives the address (and, if ``person`` is given,
    enters the items again)."""
    details = municipal_pb2.PersonDetails()
    if person is not None:
        details.CopyFrom(person)
    details.address = address
    response: municipal_pb2.MoveInResponse = await fed.operator(new).MoveIn(
        municipal_pb2.MoveInRequest(
            person=details,
            origin=municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC,
            move_out_certificate=certificate,
            household_id=household_id,
            effective_date=effective_date,
        ),
        timeout=MOVE_TIMEOUT,
    )
    return response


async def move(
    fed: Federation,
    code: str,
    old: str,
    new: str,
    *,
    address: str,
    effective_date: str,
    household_id: str = "",
) -> municipal_pb2.MoveInResponse:
    """Move ``code`` from ``old`` to ``new`` as at two counters: the move-out
    at ``old`` and the move-in with its certificate at ``new``."""
    certificate = await move_out(fed, code, old, new, effective_date=effective_date)
    return await move_in(
        fed,
        certificate,
        new,
        address=address,
        effective_date=effective_date,
        household_id=household_id,
    )


async def until_registered_at(stub: Any, code: str, municipality: str) -> None:
    """Wait until an upper tier's record of ``code`` is at ``municipality``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        with contextlib.suppress(grpc.aio.AioRpcError):
            r = await stub.GetIdentity(
                delivery_pb2.GetIdentityRequest(resident_code=code), timeout=5
            )
            if r.identity.record.local_government_code == municipality:
                return
        assert loop.time() < deadline, f"{code} never reached {municipality}"
        await asyncio.sleep(0.05)


# The sentinel a stream's read() returns at its end (grpc-stubs lacks it).
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


def text_metadata(pairs: grpc.aio.Metadata | None) -> dict[str, str]:
    """The text entries of a call's metadata (binary entries left out)."""
    return {k: v for k, v in pairs or () if isinstance(v, str)}


def trailers(err: grpc.RpcError) -> dict[str, str]:
    """The text entries of a failed call's trailing metadata."""
    # grpc-stubs types RpcError.trailing_metadata() as a tuple of objects with
    # .key/.value; grpc.aio really returns a Metadata of (key, value) pairs, or None.
    return text_metadata(cast(grpc.aio.Metadata | None, err.trailing_metadata()))


def session_options(
    target: str,
    pki_dir: Path,
    code: str,
    token: str,
    terminal: str | None = None,
    path: Path | None = None,
) -> list[str]:
    """Counter CLI options to call ``target`` from ``code``'s terminal desk1 (or the
    certificate ``terminal``) in the counter operator's session ``token``: its
    session file is written as ``jukinet login`` would, at its default place (under
    ``$XDG_STATE_HOME``) or at ``path`` (then passed as ``--session``)."""
    terminal = terminal or f"terminal-{code}-desk1"
    saved = sessions.SavedSession(
        target=target,
        terminal=terminal,
        token=token,
        operator=Identity.operator(code, COUNTER_OPERATOR).uri,
        terminal_uri=Identity.terminal(code, "desk1").uri,
        roles=("clerk", "supervisor"),
        expires_at="",
        idle_expires_at="",
    )
    sessions.save(path or sessions.session_path(target, terminal), saved)
    options = ["--target", target, "--pki", str(pki_dir), "--as", terminal]
    return [*options, "--session", str(path)] if path is not None else options
