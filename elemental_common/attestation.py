"""Server side of TPM 2.0 registration: pure software, no TPM device.

Mirrors go-attestation's ``ActivationParameters.Generate`` (AK checks + credential
activation challenge) and go-tpm's EK handling, so an EK/AK produced by Elemental's
Go client verifies here and our challenges activate on its side:

* EK PEM is a ``CERTIFICATE`` or a PKIX ``PUBLIC KEY``;
  TPM hash = hex(sha256(PKIX DER of the EK public key)).
* The AK must be a TPM-generated, restricted, non-duplicable signing key whose creation
  is certified by itself (CertifyCreation); RSA and ECC AKs are both accepted.
* The challenge is TPM2_MakeCredential bound to the AK *name*, encrypted to the EK with the
  TCG default EK parameters (nameAlg SHA-256, AES-128-CFB), computed as tpm2-pytss's
  ``make_credential`` does but directly on ``cryptography`` (``make_credential`` below): going
  through tpm2-pytss's types cost the operator ~0.7 ms per registration.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPMS_ATTEST,
    TPMS_CREATION_DATA,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
    TPMT_SYM_DEF_OBJECT,
)

from elemental_common.protocol import AttestationParameters

try:  # cryptography ≥ 47 keeps CFB (which the TPM spec mandates here) among its "decrepit" modes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB as _CFB
except ImportError:  # older cryptography (Debian trixie ships 43)
    from cryptography.hazmat.primitives.ciphers.modes import CFB as _CFB  # type: ignore[assignment]

# TPM_GENERATED_VALUE: only the TPM itself produces TPMS_ATTEST structures starting with it.
TPM_GENERATED_MAGIC = 0xFF544347
ACTIVATION_SECRET_LEN = 32
MIN_RSA_BITS = 2048

_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    int(TPM2_ALG.SHA1): hashes.SHA1,
    int(TPM2_ALG.SHA256): hashes.SHA256,
    int(TPM2_ALG.SHA384): hashes.SHA384,
    int(TPM2_ALG.SHA512): hashes.SHA512,
}
_CURVES: dict[int, ec.EllipticCurve] = {
    int(TPM2_ECC.NIST_P256): ec.SECP256R1(),
    int(TPM2_ECC.NIST_P384): ec.SECP384R1(),
    int(TPM2_ECC.NIST_P521): ec.SECP521R1(),
}


class AttestationError(Exception):
    """The EK or AK data is invalid or does not verify."""


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class EndorsementKey:
    public_key: PublicKey
    certificate: x509.Certificate | None
    tpm_hash: str


def pkix_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def tpm_hash(key: PublicKey) -> str:
    """Elemental's TPMHash: hex sha256 of the EK public key in PKIX DER form."""
    return hashlib.sha256(pkix_der(key)).hexdigest()


def parse_ek(pem: bytes) -> EndorsementKey:
    text = pem.strip()
    key: object
    try:
        if text.startswith(b"-----BEGIN CERTIFICATE-----"):
            cert = x509.load_pem_x509_certificate(text)
            key = cert.public_key()
        elif text.startswith(b"-----BEGIN PUBLIC KEY-----"):
            cert = None
            key = serialization.load_pem_public_key(text)
        else:
            raise AttestationError("invalid EK PEM: expected CERTIFICATE or PUBLIC KEY")
    except AttestationError:
        raise
    except Exception as exc:  # cryptography raises ValueError and friends on garbage
        raise AttestationError(f"invalid EK PEM: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise AttestationError(f"EK too small: {key.key_size} bits")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not any(type(key.curve) is type(c) for c in _CURVES.values()):
            raise AttestationError(f"unsupported EK curve {key.curve.name}")
    else:
        raise AttestationError("EK must be an RSA or ECC key")
    return EndorsementKey(public_key=key, certificate=cert, tpm_hash=tpm_hash(key))


def verify_ek_certificate(
    ek: EndorsementKey, ca_bundle_pem: str, now: datetime.datetime | None = None
) -> None:
    """Check that the EK certificate chains to one of the CAs in the bundle.

    The bundle may also hold intermediates. Only signatures and validity periods are checked:
    EK certificates carry TPM-specific SANs and no TLS usages, so a TLS path validator would
    reject valid ones.
    """
    if ek.certificate is None:
        raise AttestationError("EK has no certificate but a TPM CA is configured")
    try:
        bundle = x509.load_pem_x509_certificates(ca_bundle_pem.encode())
    except ValueError as exc:
        raise AttestationError(f"invalid TPM CA bundle: {exc}") from None
    now = now or datetime.datetime.now(datetime.UTC)
    cert = ek.certificate
    for _ in range(8):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AttestationError(f"certificate {cert.subject.rfc4514_string()} is not valid now")
        issuer = None
        for candidate in bundle:
            if candidate.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            issuer = candidate
            break
        if issuer is None:
            raise AttestationError("EK certificate does not chain to the configured TPM CA")
        if issuer.subject == issuer.issuer:
            return  # reached a self-signed root from the bundle
        if not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
            raise AttestationError(f"CA {issuer.subject.rfc4514_string()} is not valid now")
        # An intermediate from the bundle is trusted only if it chains further up.
        cert = issuer
    raise AttestationError("EK certificate chain too long")


def ek_tpm_public(key: PublicKey) -> TPM2B_PUBLIC:
    """TPM public area with the TCG default EK parameters, as MakeCredential needs them."""
    sym = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES)
    sym.keyBits.aes = 128
    sym.mode.aes = TPM2_ALG.CFB
    attrs = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.ADMINWITHPOLICY
        | TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.DECRYPT
    )
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public = TPM2B_PUBLIC.from_pem(pem, nameAlg=TPM2_ALG.SHA256, objectAttributes=attrs, symmetric=sym)
    if isinstance(key, ec.EllipticCurvePublicKey):
        set_full_length_point(public, key)
    return public


def set_full_length_point(public: TPM2B_PUBLIC, key: ec.EllipticCurvePublicKey) -> None:
    """Store x and y at the curve's size, as a TPM does: tpm2-pytss's from_pem drops their leading
    zero bytes, and a TPM uses the stored x as is in KDFe (MakeCredential's PartyVInfo) while
    the operator, like go-tpm, uses the full size: such a key failed ActivateCredential."""
    size = (key.curve.key_size + 7) // 8
    numbers = key.public_numbers()
    point = public.publicArea.unique.ecc
    point.x, point.y = numbers.x.to_bytes(size, "big"), numbers.y.to_bytes(size, "big")


def _unmarshal_exact(cls: Any, data: bytes, what: str) -> object:
    try:
        obj, used = cls.unmarshal(data)
    except Exception as exc:
        raise AttestationError(f"malformed {what}: {exc}") from None
    if used != len(data):
        raise AttestationError(f"malformed {what}: {len(data) - used} trailing bytes")
    return obj


def object_name(public_bytes: bytes, name_alg: int) -> bytes:
    """TPM object name: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC)."""
    hcls = _HASHES.get(int(name_alg))
    if hcls is None:
        raise AttestationError(f"unsupported name algorithm 0x{int(name_alg):x}")
    h = hashes.Hash(hcls())
    h.update(public_bytes)
    return int(name_alg).to_bytes(2, "big") + h.finalize()


# tpm2-pytss builds a Python wrapper on every attribute access of its types: the functions
# below read each nested field once into a local (that was most of check_ak_parameters' time).


def public_key_of_tpmt(pub: TPMT_PUBLIC) -> PublicKey:
    key_type = int(pub.type)
    if key_type == TPM2_ALG.RSA:
        detail = pub.parameters.rsaDetail
        bits = int(detail.keyBits)
        if bits < MIN_RSA_BITS:
            raise AttestationError(f"attestation key too small: {bits} bits")
        exponent = int(detail.exponent) or 65537
        modulus = int.from_bytes(bytes(pub.unique.rsa), "big")
        # A hostile client controls every field: refuse what cryptography would choke on (it
        # raises ValueError, which became "internal error" and a traceback) and weak keys.
        if exponent < 3 or exponent % 2 == 0:
            raise AttestationError(f"invalid AK RSA exponent {exponent}")
        if modulus.bit_length() < MIN_RSA_BITS or modulus.bit_length() != bits:
            raise AttestationError(f"invalid AK RSA modulus ({modulus.bit_length()} bits, keyBits {bits})")
        try:
            return rsa.RSAPublicNumbers(exponent, modulus).public_key()
        except ValueError as exc:
            raise AttestationError(f"invalid AK RSA key: {exc}") from None
    if key_type == TPM2_ALG.ECC:
        curve = _CURVES.get(int(pub.parameters.eccDetail.curveID))
        if curve is None:
            raise AttestationError("unsupported AK curve")
        point = pub.unique.ecc
        x = int.from_bytes(bytes(point.x), "big")
        y = int.from_bytes(bytes(point.y), "big")
        try:
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        except ValueError as exc:
            raise AttestationError(f"invalid AK point: {exc}") from None
    raise AttestationError(f"public key of alg 0x{key_type:x} not supported")


def _verify_signature(key: PublicKey, sig: TPMT_SIGNATURE, message: bytes) -> None:
    alg = int(sig.sigAlg)
    try:
        if alg in (TPM2_ALG.RSASSA, TPM2_ALG.RSAPSS) and isinstance(key, rsa.RSAPublicKey):
            rsa_sig = sig.signature.rsassa
            hcls = _HASHES.get(int(rsa_sig.hash))
            if hcls is None:
                raise AttestationError("unsupported signature hash")
            raw = bytes(rsa_sig.sig)
            pad: padding.AsymmetricPadding
            if alg == TPM2_ALG.RSASSA:
                pad = padding.PKCS1v15()
            else:
                pad = padding.PSS(mgf=padding.MGF1(hcls()), salt_length=padding.PSS.AUTO)
            key.verify(raw, message, pad, hcls())
        elif alg == TPM2_ALG.ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
            ec_sig = sig.signature.ecdsa
            hcls = _HASHES.get(int(ec_sig.hash))
            if hcls is None:
                raise AttestationError("unsupported signature hash")
            r = int.from_bytes(bytes(ec_sig.signatureR), "big")
            s = int.from_bytes(bytes(ec_sig.signatureS), "big")
            key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hcls()))
        else:
            raise AttestationError(f"unsupported signature algorithm 0x{alg:x}")
    except InvalidSignature:
        raise AttestationError("could not verify attestation: bad signature") from None


def check_ak_parameters(params: AttestationParameters) -> bytes:
    """go-attestation's checkTPM20AKParameters; returns the AK name the challenge binds to.

    Every failure is an ``AttestationError``: the input is the client's, so whatever the
    parsing libraries raise on a crafted value is a refusal, never an internal error."""
    try:
        return _check_ak_parameters(params)
    except AttestationError:
        raise
    except (ValueError, TypeError, OverflowError, KeyError, IndexError) as exc:
        raise AttestationError(f"malformed attestation key: {type(exc).__name__}: {exc}") from None


def _check_ak_parameters(params: AttestationParameters) -> bytes:
    if len(params.create_signature) < 8:
        raise AttestationError(
            f"signature is too short to be valid: only {len(params.create_signature)} bytes"
        )
    pub = _unmarshal_exact(TPMT_PUBLIC, params.public, "AK public area")
    assert isinstance(pub, TPMT_PUBLIC)
    _unmarshal_exact(TPMS_CREATION_DATA, params.create_data, "creation data")
    att = _unmarshal_exact(TPMS_ATTEST, params.create_attestation, "creation attestation")
    assert isinstance(att, TPMS_ATTEST)
    sig = _unmarshal_exact(TPMT_SIGNATURE, params.create_signature, "creation signature")
    assert isinstance(sig, TPMT_SIGNATURE)

    if int(att.magic) != TPM_GENERATED_MAGIC:
        raise AttestationError("creation attestation was not produced by a TPM")
    att_type = int(att.type)
    if att_type != TPM2_ST.ATTEST_CREATION:
        raise AttestationError(f"attestation does not apply to creation data, got tag 0x{att_type:x}")
    creation = att.attested.creation
    key = public_key_of_tpmt(pub)

    name_alg = int(pub.nameAlg)
    name_hash = _HASHES.get(name_alg)
    if name_hash is None:
        raise AttestationError("unsupported AK name algorithm")
    h = hashes.Hash(name_hash())
    h.update(params.create_data)
    if not hmac.compare_digest(bytes(creation.creationHash), h.finalize()):
        raise AttestationError("attestation refers to different public key")

    attrs = int(pub.objectAttributes)
    required = {
        TPMA_OBJECT.FIXEDTPM: "provided key is exportable",
        TPMA_OBJECT.RESTRICTED: "provided key is not limited to attestation",
        TPMA_OBJECT.FIXEDPARENT: "provided key can be duplicated to a different parent",
        TPMA_OBJECT.SENSITIVEDATAORIGIN: "provided key is not created by TPM",
        TPMA_OBJECT.SIGN_ENCRYPT: "provided key is not a signing key",
    }
    for flag, message in required.items():
        if not attrs & int(flag):
            raise AttestationError(message)
    if attrs & int(TPMA_OBJECT.DECRYPT):
        raise AttestationError("provided key is a decryption key")

    name = object_name(params.public, name_alg)
    if not hmac.compare_digest(bytes(creation.objectName), name):
        raise AttestationError("creation attestation refers to a different key")
    _verify_signature(key, sig, params.create_attestation)
    return name


@dataclass(frozen=True)
class Challenge:
    """What the server keeps (``secret``) and sends (``credential``, ``encrypted_secret``)."""

    secret: bytes
    credential: bytes  # marshalled TPM2B_ID_OBJECT
    encrypted_secret: bytes  # marshalled TPM2B_ENCRYPTED_SECRET


def _tpm2b(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _kdfa(key: bytes, label: bytes, context: bytes, nbytes: int) -> bytes:
    """TPM KDFa with SHA-256 (SP 800-108 counter mode; KBKDF adds the label's 0 separator)."""
    return KBKDFHMAC(
        algorithm=hashes.SHA256(),
        mode=Mode.CounterMode,
        length=nbytes,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context,
        fixed=None,
    ).derive(key)


def make_credential(ek_key: PublicKey, credential: bytes, name: bytes) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential for an EK with the TCG default parameters (nameAlg SHA-256,
    AES-128-CFB); returns the marshalled TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET.

    Same computation as ``tpm2_pytss.utils.make_credential`` (TPM 2.0 part 1, 24.4 and
    annex B.10/C.6.4): a seed protected with RSA-OAEP(SHA-256, "IDENTITY") or ECDH + KDFe,
    then KDFa "STORAGE" → AES key, KDFa "INTEGRITY" → HMAC key over the encrypted credential
    and the object name.
    """
    label = b"IDENTITY\x00"
    if isinstance(ek_key, rsa.RSAPublicKey):
        seed = secrets.token_bytes(32)
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
        enc_seed = ek_key.encrypt(seed, oaep)
    else:
        ephemeral = ec.generate_private_key(ek_key.curve)
        size = (ek_key.curve.key_size + 7) // 8
        point = ephemeral.public_key().public_numbers()
        ex, ey = point.x.to_bytes(size, "big"), point.y.to_bytes(size, "big")
        enc_seed = _tpm2b(ex) + _tpm2b(ey)  # TPMS_ECC_POINT
        z = ephemeral.exchange(ec.ECDH(), ek_key)
        peer_x = ek_key.public_numbers().x.to_bytes(size, "big")
        seed = ConcatKDFHash(algorithm=hashes.SHA256(), length=32, otherinfo=label + ex + peer_x).derive(z)
    sym_key = _kdfa(seed, b"STORAGE", name, 16)
    encryptor = Cipher(algorithms.AES(sym_key), _CFB(b"\x00" * 16)).encryptor()
    enc_cred = encryptor.update(_tpm2b(credential)) + encryptor.finalize()
    mac = HMAC(_kdfa(seed, b"INTEGRITY", b"", 32), hashes.SHA256())
    mac.update(enc_cred)
    mac.update(name)
    return _tpm2b(_tpm2b(mac.finalize()) + enc_cred), _tpm2b(enc_seed)


def make_challenge(ek: EndorsementKey, ak_name: bytes) -> Challenge:
    secret = secrets.token_bytes(ACTIVATION_SECRET_LEN)
    try:
        credential, encrypted_secret = make_credential(ek.public_key, secret, ak_name)
    except Exception as exc:
        raise AttestationError(f"cannot generate activation challenge: {exc}") from None
    return Challenge(secret=secret, credential=credential, encrypted_secret=encrypted_secret)


def verify_answer(challenge: Challenge, answer: bytes) -> bool:
    # Elemental used bytes.Equal here; a constant-time compare leaks nothing about the secret.
    return hmac.compare_digest(challenge.secret, answer)
