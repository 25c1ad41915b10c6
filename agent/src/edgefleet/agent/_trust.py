"""What the device trusts: the keys of agent.toml until a signed trust update replaces them,
minus every key id a trust update ever revoked. Pure rules; the agent persists the result."""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, Field

from edgefleet.shared import SignedBlob, TrustUpdate, check_trust_update, raw_public_key
from edgefleet.shared import key_id as id_of_key
from edgefleet.shared.errors import KeyRevoked

Keyring = dict[str, Ed25519PublicKey]


class TrustState(BaseModel):
    """The last trust update applied (version 0: none yet, agent.toml's keys rule)."""

    version: int = 0
    update_id: str | None = None
    keys: list[str] = Field(default_factory=list)  # base64 raw public keys
    revoked: list[str] = Field(default_factory=list)  # key ids, kept forever

    def keyring(self, configured: Mapping[str, Ed25519PublicKey]) -> Keyring:
        """The keys a command may be signed with now.

        Once an update is applied it is the whole truth (TUF's root): agent.toml's keys no
        longer count, so a key the fleet retired is gone even where the file still names it.
        Revoked ids are subtracted in both cases, and :func:`edgefleet.shared.verify` refuses
        them by id as well."""
        if self.version == 0:
            base = dict(configured)
        else:
            base = {id_of_key(k): k for k in (raw_public_key(text) for text in self.keys)}
        return {kid: key for kid, key in base.items() if kid not in self.revoked}

    def is_current(self, update: TrustUpdate) -> bool:
        """The update applied last, delivered again (QoS 1): answered, never re-applied."""
        return update.version == self.version and update.update_id == self.update_id

    def applied(self, update: TrustUpdate) -> TrustState:
        """The state after ``update`` (already verified and checked)."""
        revoked = list(self.revoked)
        revoked += [kid for kid in update.revoked if kid not in revoked]
        return TrustState(
            version=update.version,
            update_id=update.update_id,
            keys=list(update.keys),
            revoked=revoked,
        )

    def after(
        self,
        update: TrustUpdate,
        blob: SignedBlob,
        *,
        device_id: str,
        configured: Mapping[str, Ed25519PublicKey],
    ) -> tuple[TrustState, Keyring]:
        """The state and keyring once the verified ``update`` applies; a
        :class:`~edgefleet.shared.errors.MessageError` if it may not (another device's, not
        the next version, or trusting only keys revoked before)."""
        check_trust_update(update, blob, device_id=device_id, version=self.version)
        after = self.applied(update)
        keyring = after.keyring(configured)
        if not keyring:
            raise KeyRevoked("the update trusts only keys revoked before")
        return after, keyring
