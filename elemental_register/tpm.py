"""Client TPM 2.0 operations for registration (tpm2-pytss / ESAPI).

* EK: the persistent EK (0x81010001 RSA, 0x81010002 ECC) when provisioned, else the TCG
  default EK template (``create_ek_template``) created under the endorsement hierarchy;
  the EK certificate is read from NV when present.
* AK: a restricted signing key under the SRK (persistent 0x81000001 when provisioned,
  else a transient ECC storage primary: nothing is written to the TPM), certified by
  itself with TPM2_CertifyCreation, giving go-attestation ``AttestationParameters``.
* ActivateCredential with a policy session satisfying PolicySecret(endorsement), the EK
  template's policy.

Emulated TPM: :class:`Swtpm` runs a private ``swtpm``; the EK is then an ECC P-256 key
derived from the seed and imported into that TPM with the EK's attributes and policy, so
the identity depends only on the seed while every operation still runs in a real TPM.
(The EK that swtpm itself would derive comes from an endorsement seed swtpm draws at random
at manufacture, which no swtpm option fixes.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss import ESAPI, TCTILdr
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HC, TPM2_SE, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
)
from tpm2_pytss.utils import NoSuchIndex, create_ek_template, wrap

from elemental_common.attestation import (
    PublicKey,
    pkix_der,
    public_key_of_tpmt,
    set_full_length_point,
    tpm_hash,
)
from elemental_common.protocol import AttestationData, AttestationParameters
from elemental_common.run import spawn

log = logging.getLogger(__name__)

DEFAULT_TCTI = "device:/dev/tpmrm0"
RSA_EK_HANDLE = 0x81010001
ECC_EK_HANDLE = 0x81010002
SRK_HANDLE = 0x81000001
RSA_EK_CERT_INDEX = 0x01C00002
ECC_EK_CERT_INDEX = 0x01C0000A
# PolicySecret(TPM_RH_ENDORSEMENT): the authPolicy of the TCG default EK templates.
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")

_AK_ATTRS = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
)
_SRK_ATTRS = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
)


class TPMError(Exception):
    """The TPM could not be opened or a TPM operation failed."""


def _aes128cfb() -> TPMT_SYM_DEF_OBJECT:
    sym = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES)
    sym.keyBits.aes = 128
    sym.mode.aes = TPM2_ALG.CFB
    return sym


def tpm_public_to_key(public: TPM2B_PUBLIC) -> PublicKey:
    """cryptography key of a TPM public area (own code: the pytss helper differs across versions)."""
    return public_key_of_tpmt(public.publicArea)


def _der_prefix(blob: bytes) -> bytes:
    """NV certificates are often zero-padded: cut the blob to the DER SEQUENCE's length."""
    if len(blob) < 2 or blob[0] != 0x30:
        return blob
    first = blob[1]
    if first < 0x80:
        return blob[: 2 + first]
    n = first & 0x7F
    length = int.from_bytes(blob[2 : 2 + n], "big")
    return blob[: 2 + n + length]


def emulated_ek_key(seed: int) -> ec.EllipticCurvePrivateKey:
    """Deterministic ECC P-256 EK for an emulated TPM (same seed → same TPM hash)."""
    material = hashlib.sha512(b"elemental-py emulated EK\0" + str(int(seed)).encode()).digest()
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    scalar = int.from_bytes(material, "big") % (order - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


@dataclass
class EKInfo:
    handle: Any  # ESYS_TR
    public: TPM2B_PUBLIC
    key: PublicKey
    certificate: bytes | None  # DER
    transient: bool

    @property
    def pem(self) -> bytes:
        """What go-tpm sends: the certificate when there is one, else the PKIX public key."""
        if self.certificate:
            return x509.load_der_x509_certificate(self.certificate).public_bytes(serialization.Encoding.PEM)
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def tpm_hash(self) -> str:
        return tpm_hash(self.key)


class TPM:
    """One ESAPI connection; use as a context manager so transient objects get flushed."""

    def __init__(
        self,
        tcti: str = DEFAULT_TCTI,
        *,
        ek_alg: str = "rsa",
        ak_alg: str = "rsa",
        emulated_seed: int | None = None,
    ) -> None:
        if ek_alg not in ("rsa", "ecc") or ak_alg not in ("rsa", "ecc"):
            raise ValueError("key algorithms are 'rsa' or 'ecc'")
        self.ek_alg = ek_alg
        # RSA by default: go-attestation (the real Elemental operator) only verifies RSA AKs.
        self.ak_alg = ak_alg
        self.emulated_seed = emulated_seed
        self._transient: list[Any] = []
        self._ek: EKInfo | None = None
        self._srk: Any = None
        self._ak: Any = None
        try:
            self._tcti = TCTILdr.parse(tcti)
            self.esys = ESAPI(self._tcti)
        except Exception as exc:
            raise TPMError(f"cannot open TPM {tcti!r}: {exc}") from None

    def __enter__(self) -> TPM:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for handle in reversed(self._transient):
            try:
                self.esys.flush_context(handle)
            except Exception:
                pass
        self._transient.clear()
        try:
            self.esys.close()
        except Exception:
            pass
        try:
            self._tcti.close()
        except Exception:
            pass

    # -- helpers -------------------------------------------------------------------------------

    def _handles(self, first: int) -> set[int]:
        out: set[int] = set()
        more = True
        start = first
        while more:
            more, data = self.esys.get_capability(TPM2_CAP.HANDLES, start, 64)
            handles = [int(h) for h in data.data.handles]
            out.update(handles)
            if not handles:
                break
            start = handles[-1] + 1
        return out

    def _nv_reader(self) -> Any:
        # Listing NV indices first avoids ESYS's error logging for every absent index.
        present = self._handles(int(TPM2_HC.NV_INDEX_FIRST))

        def read(index: int) -> bytes:
            if int(index) not in present:
                raise NoSuchIndex(index)
            handle = self.esys.tr_from_tpmpublic(int(index))
            nvpub, _ = self.esys.nv_read_public(handle)
            size = int(nvpub.nvPublic.dataSize)
            data = b""
            while len(data) < size:
                chunk = min(512, size - len(data))  # under every TPM's NV_BUFFER_MAX
                data += bytes(self.esys.nv_read(handle, chunk, len(data), auth_handle=handle))
            return data

        return read

    def _track(self, handle: Any) -> Any:
        self._transient.append(handle)
        return handle

    # -- keys ----------------------------------------------------------------------------------

    def srk(self) -> Any:
        if self._srk is None:
            try:
                if SRK_HANDLE in self._handles(SRK_HANDLE):
                    self._srk = self.esys.tr_from_tpmpublic(SRK_HANDLE)
                else:
                    template = TPM2B_PUBLIC.parse("ecc256:null:aes128cfb", objectAttributes=_SRK_ATTRS)
                    handle, _, _, _, _ = self.esys.create_primary(None, template, ESYS_TR.OWNER)
                    self._srk = self._track(handle)
            except Exception as exc:
                raise TPMError(f"cannot load the storage root key: {exc}") from None
        return self._srk

    def ek(self) -> EKInfo:
        if self._ek is None:
            try:
                self._ek = self._emulated_ek() if self.emulated_seed is not None else self._device_ek()
            except TPMError:
                raise
            except Exception as exc:
                raise TPMError(f"cannot read the endorsement key: {exc}") from None
        return self._ek

    def _device_ek(self) -> EKInfo:
        kind = "EK-RSA2048" if self.ek_alg == "rsa" else "EK-ECC256"
        cert, template = create_ek_template(kind, self._nv_reader())
        cert_der = _der_prefix(bytes(cert)) if cert else None
        persistent = RSA_EK_HANDLE if self.ek_alg == "rsa" else ECC_EK_HANDLE
        if persistent in self._handles(persistent):
            handle = self.esys.tr_from_tpmpublic(persistent)
            public, _, _ = self.esys.read_public(handle)
            transient = False
        else:
            handle, public, _, _, _ = self.esys.create_primary(None, template, ESYS_TR.ENDORSEMENT)
            self._track(handle)
            transient = True
        key = tpm_public_to_key(public)
        if cert_der is not None:
            try:
                cert_key = x509.load_der_x509_certificate(cert_der).public_key()
                if pkix_der(cert_key) != pkix_der(key):  # type: ignore[arg-type]
                    log.warning("EK certificate in NV does not match the EK; sending the bare key")
                    cert_der = None
            except ValueError:
                log.warning("EK certificate in NV is not valid DER; sending the bare key")
                cert_der = None
        return EKInfo(handle=handle, public=public, key=key, certificate=cert_der, transient=transient)

    def provision_ek(self) -> int:
        """Persist the EK at its TCG handle, as TPM manufacturing / swtpm_setup does.

        Not done implicitly: writing a machine's persistent TPM area is the owner's decision.
        Afterwards every registration reads the EK instead of re-deriving it (an RSA EK costs
        0.1-0.6 s of prime search in a software TPM).
        """
        persistent = RSA_EK_HANDLE if self.ek_alg == "rsa" else ECC_EK_HANDLE
        if persistent in self._handles(persistent):
            return persistent
        kind = "EK-RSA2048" if self.ek_alg == "rsa" else "EK-ECC256"
        _, template = create_ek_template(kind, self._nv_reader())
        try:
            handle, _, _, _, _ = self.esys.create_primary(None, template, ESYS_TR.ENDORSEMENT)
            try:
                self.esys.evict_control(ESYS_TR.OWNER, handle, persistent)
            finally:
                self.esys.flush_context(handle)
        except Exception as exc:
            raise TPMError(f"cannot persist the endorsement key: {exc}") from None
        self._ek = None
        return persistent

    def _emulated_ek(self) -> EKInfo:
        assert self.emulated_seed is not None
        priv = emulated_ek_key(self.emulated_seed)
        pem = priv.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Same attributes and policy as a TCG EK, minus fixedTPM/fixedParent/sensitiveDataOrigin,
        # which the TPM refuses on imported keys.
        public = TPM2B_PUBLIC.from_pem(
            pem,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.ADMINWITHPOLICY,
            symmetric=_aes128cfb(),
        )
        public.publicArea.authPolicy = EK_POLICY
        sensitive = TPM2B_SENSITIVE.from_pem(pem)
        # from_pem drops leading zero bytes; a TPM-made key has full-length values (a short x
        # failed ActivateCredential for 1 seed in ~100: see set_full_length_point).
        set_full_length_point(public, priv.public_key())
        size = (priv.curve.key_size + 7) // 8
        sensitive.sensitiveArea.sensitive.ecc = priv.private_numbers().private_value.to_bytes(size, "big")
        # A storage (restricted decrypt) key needs a seed value of the name digest size.
        sensitive.sensitiveArea.seedValue = hashlib.sha256(b"seed-value" + pem).digest()
        srk = self.srk()
        srk_public, _, _ = self.esys.read_public(srk)
        enc_key, duplicate, sym_seed = wrap(srk_public.publicArea, public, sensitive)
        private = self.esys.import_(
            srk, enc_key, public, duplicate, sym_seed, TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL)
        )
        handle = self._track(self.esys.load(srk, private, public))
        return EKInfo(handle=handle, public=public, key=priv.public_key(), certificate=None, transient=True)

    def attestation_data(self) -> AttestationData:
        """Create a fresh AK and return the EK PEM + AK attestation parameters."""
        ek = self.ek()
        srk = self.srk()
        spec = "rsa2048:rsassa-sha256:null" if self.ak_alg == "rsa" else "ecc256:ecdsa-sha256:null"
        try:
            template = TPM2B_PUBLIC.parse(spec, objectAttributes=_AK_ATTRS)
            private, public, creation_data, creation_hash, ticket = self.esys.create(srk, None, template)
            self._ak = self._track(self.esys.load(srk, private, public))
            attest, signature = self.esys.certify_creation(
                self._ak, self._ak, b"", creation_hash, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket
            )
        except Exception as exc:
            raise TPMError(f"cannot create the attestation key: {exc}") from None
        params = AttestationParameters(
            public=public.publicArea.marshal(),
            create_data=creation_data.creationData.marshal(),
            create_attestation=bytes(attest),
            create_signature=signature.marshal(),
        )
        return AttestationData(ek_pem=ek.pem, ak=params)

    def activate_credential(self, credential: bytes, secret: bytes) -> bytes:
        """Decrypt the server's challenge: proves the AK lives in the TPM holding the EK."""
        if self._ak is None:
            raise TPMError("no attestation key: call attestation_data() first")
        ek = self.ek()
        try:
            cred, _ = TPM2B_ID_OBJECT.unmarshal(credential)
            enc, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(secret)
        except Exception as exc:
            raise TPMError(f"malformed challenge: {exc}") from None
        session = None
        try:
            session = self.esys.start_auth_session(
                ESYS_TR.NONE,
                ESYS_TR.NONE,
                TPM2_SE.POLICY,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                TPM2_ALG.SHA256,
            )
            self.esys.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            out = self.esys.activate_credential(
                self._ak, ek.handle, cred, enc, session1=ESYS_TR.PASSWORD, session2=session
            )
            return bytes(out)
        except Exception as exc:
            raise TPMError(f"failed to activate credential: {exc}") from None
        finally:
            if session is not None:  # ESYS sessions keep continueSession set: flush explicitly
                try:
                    self.esys.flush_context(session)
                except Exception:
                    pass


# ---------------------------------------------------------------------------------------------
# swtpm


def _free_port_pair() -> int:
    """A port N such that N and N+1 are free on 127.0.0.1 (swtpm's ctrl port is N+1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise TPMError("no free port pair for swtpm")


class Swtpm:
    """A private ``swtpm socket`` on 127.0.0.1; ``tcti`` is the tpm2-tss TCTI string for it.

    ``state_dir=None`` uses a temporary directory removed on stop. The state dir must be
    absolute (swtpm fails to lock a relative one).
    """

    def __init__(self, state_dir: str | None = None, binary: str = "swtpm") -> None:
        self._tmp = None if state_dir else tempfile.mkdtemp(prefix="swtpm-")
        self.state_dir = os.path.abspath(state_dir or self._tmp or "")
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self, timeout: float = 5.0) -> Swtpm:
        if shutil.which(self.binary) is None:
            raise TPMError(f"{self.binary} not found: install swtpm to emulate a TPM")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        last = ""
        for _ in range(5):
            self.port = _free_port_pair()
            self.proc = spawn(
                [
                    self.binary,
                    "socket",
                    "--tpm2",
                    "--server",
                    f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                    "--ctrl",
                    f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                    "--tpmstate",
                    f"dir={self.state_dir}",
                    "--flags",
                    "not-need-init,startup-clear",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return self
                except OSError:
                    time.sleep(0.005)
            if self.proc.poll() is None:
                self.proc.kill()
            _, err = self.proc.communicate()
            last = err.decode(errors="replace").strip()
        raise TPMError(f"swtpm did not start: {last}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Swtpm:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
