"""What every part of the operator shares at run time: the store and the server's identity.

The HTTP layer, the registration handler and the controllers receive one
``OperatorContext``; none of them reads global state.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from elemental_operator.store.base import Resource, Store


@dataclass
class OperatorContext:
    store: Store
    # Base URL machines use to reach this operator, e.g. "https://10.0.2.2:8443".
    # MachineRegistration.status.registrationURL = public_url + "/elemental/registration/<token>".
    public_url: str
    # PEM of the CA that signed the server certificate (sent to clients as `ca-cert`); "" for plain HTTP.
    ca_cert_pem: str = ""
    # Secret key for per-machine agent credentials (see agent_token). Kept in the state directory.
    secret_key: bytes = field(default=b"", repr=False)
    # Optional PEM bundle of TPM manufacturer CAs; when set, EK certificates must chain to it.
    tpm_ca_pem: str = ""

    # Per-machine agent credentials are derived, not stored: HMAC(secret_key, inventory uid).
    # Deleting an inventory (new uid on re-registration) revokes its credential for free.
    def agent_token(self, inventory: Resource) -> str:
        meta = inventory["metadata"]
        mac = hmac.new(self.secret_key, meta["uid"].encode(), hashlib.sha256).hexdigest()
        return f"{meta['namespace']}/{meta['name']}:{mac}"

    def verify_agent_token(self, token: str) -> Resource | None:
        """Return the MachineInventory a token belongs to, or None (constant-time compare)."""
        ident, _, mac = token.rpartition(":")
        namespace, _, name = ident.partition("/")
        if not (namespace and name and mac):
            return None
        try:
            inventory = self.store.get("MachineInventory", namespace, name)
        except Exception:
            return None
        expected = self.agent_token(inventory).rpartition(":")[2]
        return inventory if hmac.compare_digest(expected, mac) else None
