"""The catalogue of machine-readable reasons a node gives when it refuses a call.

Every refusal names one of these in its ``jukinet-reason`` trailer and, equal
to it, in the ``reason`` of the ``google.rpc.ErrorInfo`` detail of its status
(domain :data:`DOMAIN`). Callers branch on the reason, never on the message
text, so a value here is part of the wire contract: add members freely,
never change or reuse a value.
"""

from __future__ import annotations

import enum

DOMAIN = "jukinet.example"
"""The ``google.rpc.ErrorInfo`` domain of every reason below."""


class Reason(enum.StrEnum):
    """Why a call was refused; the value is what travels on the wire."""

    # Generic reasons, one per status code a node raises on purpose.
    INTERNAL = "internal"  # a fault on the server; details are in its log only
    UNIMPLEMENTED = "unimplemented"  # this node does not serve the method
    INVALID_ARGUMENT = "invalid-argument"  # a field of the request is malformed
    NOT_FOUND = "not-found"  # the thing asked for does not exist here
    ALREADY_EXISTS = "already-exists"  # the thing to create exists already
    FAILED_PRECONDITION = "failed-precondition"  # well formed, but the state forbids it
    PERMISSION_DENIED = "permission-denied"  # the caller may not do this
    UNAUTHENTICATED = "unauthenticated"  # the caller could not be identified
    RESOURCE_EXHAUSTED = "resource-exhausted"  # a limit was reached
    UNAVAILABLE = "unavailable"  # a dependency cannot be reached now; retry
    UPSTREAM = "upstream"  # the next tier failed without giving a reason of its own
    STORAGE_FULL = "storage-full"  # the node's database storage is full; nothing was stored

    # Authentication and authorization (the server interceptor).
    NO_CLIENT_CERTIFICATE = "no-client-certificate"  # the connection carries no certificate
    BAD_CERTIFICATE = "bad-certificate"  # the certificate names no single valid identity
    REVOKED_CERTIFICATE = "revoked-certificate"  # the certificate's serial is revoked
    WRONG_IDENTITY = "wrong-identity"  # the method's rule does not admit this caller
    NO_RULE = "no-rule"  # the method has no rule, so nobody may call it

    # Delivery of notifications between tiers.
    SEQUENCE_GAP = "sequence-gap"  # a delivery skipped ahead; rewind to the expected one
    FOREIGN_ORIGIN = "foreign-origin"  # a notification's origin is not the sender's own
    NOT_HELD = "not-held"  # the municipality acting on a resident does not hold (register) them
    # A well-formed entry this tier's store refused for a reason that is not the data's
    # (a constraint or trigger of the store, a fault while folding): the sender backs off
    # until an operator has removed the obstacle; ErrorInfo names origin and sequence.
    NOTIFICATION_UNAPPLIABLE = "notification-unappliable"
    # A notification redelivered under an applied (origin, sequence) with other content:
    # the sender's history diverges from what it delivered (restored from an old backup).
    NOTIFICATION_CONFLICT = "notification-conflict"

    # The municipal register.
    ALREADY_REGISTERED = "already-registered"  # the resident is registered here already
    NOT_REGISTERED = "not-registered"  # the resident is not (or no longer) registered here
    NOT_MOVED_OUT = "not-moved-out"  # the resident's last change here is no domestic move-out
    # A change dated before the current registration began (or a return dated before the
    # removal it follows); a field violation names the date.
    BEFORE_REGISTRATION = "before-registration"

    # The move-out certificate (転出証明書) a domestic move-in rests on.
    MOVE_OUT_CERTIFICATE_MISSING = "move-out-certificate-missing"  # none was given
    MOVE_OUT_CERTIFICATE_INVALID = (
        "move-out-certificate-invalid"  # unreadable, bad signature or chain
    )
    MOVE_OUT_CERTIFICATE_FOREIGN = (
        "move-out-certificate-foreign"  # signed by another than its issuer
    )
    MOVE_OUT_CERTIFICATE_REPLAYED = "move-out-certificate-replayed"  # used before at this node
    MOVE_OUT_CERTIFICATE_NOT_HELD = (
        "move-out-certificate-not-held"  # issuer does not hold the resident
    )
    MOVE_OUT_CERTIFICATE_MISMATCH = (
        "move-out-certificate-mismatch"  # another code, items or destination
    )

    # The purpose registry and quotas of agency lookups.
    UNKNOWN_PURPOSE = "unknown-purpose"  # the purpose code is not in the registry
    AGENCY_NOT_ALLOWED = "agency-not-allowed"  # the purpose is not granted to this agency
    OPERATION_NOT_ALLOWED = "operation-not-allowed"  # the purpose does not allow the operation
    FIELD_NOT_ALLOWED = "field-not-allowed"  # a requested field is outside the purpose
    UNKNOWN_AGENCY = "unknown-agency"  # the agency is not in the purpose registry
    QUOTA_EXCEEDED = "quota-exceeded"  # the agency's quota for the purpose is used up

    # Operators at a counter terminal: the IC card, the password, the session.
    CARD_INVALID = "card-invalid"  # the card's certificate or its chain does not verify
    CARD_REVOKED = "card-revoked"  # the card's certificate (or its operator CA) is revoked
    FOREIGN_CARD = "foreign-card"  # the card is of another organisation than the terminal
    FOREIGN_TERMINAL = "foreign-terminal"  # the terminal is of another organisation than the node
    # The login challenge is unknown, used, expired, of another terminal, or its
    # signature does not verify against the card's certificate.
    CHALLENGE_INVALID = "challenge-invalid"
    # Resident cards (住民基本台帳カード).
    CARD_LAPSED = "card-lapsed"  # the card lapsed: its holder moved out (or was removed)
    CARD_HELD = "card-held"  # the resident holds a valid card already: one card per resident
    CONTINUATION_TOO_LATE = "continuation-too-late"  # past 90 days after the move-in
    WRONG_PASSWORD = "wrong-password"  # the password does not match (or no such account)
    LOCKED_OUT = "locked-out"  # too many wrong passwords: the account waits a while
    PASSWORD_EXPIRED = "password-expired"  # the password must be changed to log in
    WEAK_PASSWORD = "weak-password"  # a new password does not meet the strength rule
    PASSWORD_REUSED = "password-reused"  # a new password is the current or the previous one
    SESSION_INVALID = "session-invalid"  # the session token is unknown or ended
    SESSION_EXPIRED = "session-expired"  # the session was idle too long or reached its maximum
    WRONG_TERMINAL = "wrong-terminal"  # the session token was presented from another terminal
    SESSION_REQUIRED = "session-required"  # a terminal's call carries no session token
    # An operator certificate at a node where operators log in at a terminal with their card.
    LOGIN_REQUIRED = "login-required"
    ROLE_MISSING = "role-missing"  # no role of the operator allows the method (ErrorInfo: roles)
    SELF_GRANT = "self-grant"  # an administrator acting on their own roles or password
    LAST_ADMINISTRATOR = "last-administrator"  # the role withdrawn is the last administrator's

    # The operation log's heads between tiers.
    CHECKPOINT_FOREIGN = "checkpoint-foreign"  # a head (or heads asked for) of another node's log
    CHECKPOINT_INCONSISTENT = (
        "checkpoint-inconsistent"  # a head that does not extend the one held (a forked log)
    )
    LOG_KEY_UNKNOWN = "log-key-unknown"  # no log verifier key is configured for the origin

    # Requests relayed between municipalities (jukinet.relay).
    DIRECTORY_INVALID = "directory-invalid"  # a directory not signed by the national node's key
    # No directory held, or the one held is past its expiry and grace: nothing is relayed.
    DIRECTORY_EXPIRED = "directory-expired"
    RELAY_WRONG_HOP = "relay-wrong-hop"  # the caller may not hand this envelope to this node
    RELAY_UNKNOWN_DESTINATION = "relay-unknown-destination"  # the directory lists no such node
    # A sealed body that does not open here, or whose signature or signer does not verify.
    RELAY_SEAL_INVALID = "relay-seal-invalid"
    # A request id seen before with another source, kind or body.
    RELAY_REQUEST_CONFLICT = "relay-request-conflict"
    # A move-in notice that does not fit a move-out certificate this municipality issued.
    MOVE_IN_NOTICE_MISMATCH = "move-in-notice-mismatch"

    # Moving with the resident card (転出・転入の特例).
    MOVE_ABROAD_BY_POST = "move-abroad-by-post"  # a move abroad is not filed by post
    # The card's signature of a posted move-out filing does not verify.
    FILING_SIGNATURE_INVALID = "filing-signature-invalid"
    CARD_NOT_HOLDERS = "card-not-holders"  # the card is not the named resident's
    NO_MOVE_OUT_FILED = "no-move-out-filed"  # no move-out was filed by post with this card
    # The move-out data of a card asked by another municipality than the filed destination.
    NOT_FILED_DESTINATION = "not-filed-destination"
    # Past 14 days after the move-in or 30 days after the planned move-out date.
    SPECIAL_MOVE_IN_TOO_LATE = "special-move-in-too-late"
    # Copies of the resident record issued at any municipality (広域交付).
    # A resident asked for is not a current member of the applicant's household.
    NOT_HOUSEHOLD_MEMBER = "not-household-member"
