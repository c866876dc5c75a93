"""Operator cards for tests: a PKI with operator CAs, and real SoftHSM2 tokens.

SoftHSM2 must be installed (Debian ``softhsm2``; ``.ci/run`` installs it): the
card tests fail, never skip, without it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from jukinet import card, pki
from jukinet.identity import Identity

ORG = "312011"  # Tottori
OTHER_ORG = "312029"  # Yonago, same prefecture
PIN = "246810"
SO_PIN = "so-135791"
TERMINAL = Identity.terminal(ORG, "desk-1")
OTHER_TERMINAL = Identity.terminal(ORG, "desk-2")
FOREIGN_TERMINAL = Identity.terminal(OTHER_ORG, "desk-1")
TANAKA = Identity.operator(ORG, "t.tanaka")


def require_softhsm() -> str:
    """The SoftHSM2 module's path; fails the test with what to install when it is missing."""
    try:
        path = card.module_path()
    except card.ModuleMissing as exc:
        pytest.fail(f"{exc} (CI installs it; the card tests do not run without it)", pytrace=False)
    if shutil.which(card.SOFTHSM_UTIL) is None:
        pytest.fail(
            f"{card.SOFTHSM_UTIL} not found: {card.INSTALL_HINT} (CI installs it)", pytrace=False
        )
    return path


@dataclass
class Cards:
    """A PKI directory with operator CAs for two organisations, and a SoftHSM2 of its own."""

    pki: Path
    hsm: card.SoftHsm

    def blank(self, label: str) -> None:
        """Put a blank (initialised, keyless) card labelled ``label`` into the reader."""
        self.hsm.init_token(label, SO_PIN, PIN)
        self.hsm.activate()

    def provision(self, label: str, operator: Identity) -> None:
        """A blank card for ``operator``, provisioned by its organisation's operator CA."""
        self.blank(label)
        card.provision_card(
            card.load_module(),
            PIN,
            lambda key: pki.issue_card_certificate(self.pki, operator, key),
            label=label,
        )
