"""A name the municipal node accepts is stored at every tier, whatever its
search keys grow to (NFKC can make a key many times longer than the name)."""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jukinet.v1 import delivery_pb2, municipal_pb2
from tests.federation import Federation
from tests.integration.test_smoke import person

# U+FDFA folds to 18 characters: ten of them made a 150-character key.
LONG_FOLDING = "\ufdfa" * 10
# Characters whose NFKC form is long or odd, mixed with ordinary name text.
_FOLDING = "\ufdfa\ufdfb\u3300\u3307\u33ff\u2474\u249c\ufb01\uff21\u2160\u337b"
_NAMES = st.text(
    alphabet=st.sampled_from(_FOLDING) | st.characters(codec="utf-8"),
    min_size=1,
    max_size=100,
)


def _sample_names(count: int) -> list[str]:
    """A fixed, reproducible sample of names, drawn once by hypothesis."""
    drawn: list[str] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_NAMES)
    def collect(name: str) -> None:
        drawn.append(name)

    collect()
    return drawn


async def _stored_everywhere(fed: Federation, codes: dict[str, str]) -> None:
    prefecture = fed.prefecture_operator("31")
    national = fed.national_operator()
    for code, name in codes.items():
        request = delivery_pb2.GetIdentityRequest(resident_code=code)
        for tier in (prefecture, national):
            held = await tier.GetIdentity(request)
            assert held.identity.record.name == name


async def test_name_with_long_search_key_reaches_every_tier(fed: Federation) -> None:
    op = fed.operator("312011")
    long_one = await op.RegisterBirth(
        municipal_pb2.RegisterBirthRequest(person=person(name=LONG_FOLDING))
    )
    # The one after it must not be stuck behind it.
    after = await op.RegisterBirth(municipal_pb2.RegisterBirthRequest(person=person()))
    await fed.wait_delivered()
    await _stored_everywhere(
        fed,
        {
            long_one.resident.resident_code: LONG_FOLDING,
            after.resident.resident_code: "鳥取 花子",
        },
    )


async def test_any_name_the_municipality_accepts_is_stored_at_every_tier(
    fed: Federation,
) -> None:
    op = fed.operator("312011")
    accepted: dict[str, str] = {}
    refused = 0
    for name in _sample_names(40):
        try:
            born = await op.RegisterBirth(
                municipal_pb2.RegisterBirthRequest(person=person(name=name))
            )
        except grpc.aio.AioRpcError as exc:
            # Refused at the counter is fine; a server fault is not.
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc.details()
            refused += 1
            continue
        accepted[born.resident.resident_code] = name
    assert accepted, "the sample should hold names the municipality accepts"
    await fed.wait_delivered(within=60)
    await _stored_everywhere(fed, accepted)
