"""TPM attestation against a real swtpm: client (elemental_register.tpm) + server checks
(elemental_common.attestation), including tampered AK parameters and EK certificates."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers_registration import swtpm, swtpm_factory  # noqa: F401
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV
from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

from elemental_common import attestation as A
from elemental_common import protocol as P
from elemental_register.tpm import RSA_EK_CERT_INDEX, TPM, Swtpm, TPMError


def _roundtrip(tpm: TPM) -> tuple[A.EndorsementKey, bool]:
    data = P.parse_authorization(P.tpm_auth_header(tpm.attestation_data()))
    assert isinstance(data, P.AttestationData)
    ek = A.parse_ek(data.ek_pem)
    challenge = A.make_challenge(ek, A.check_ak_parameters(data.ak))
    cred, secret = P.decode_challenge(P.encode_challenge(challenge.credential, challenge.encrypted_secret))
    return ek, A.verify_answer(challenge, tpm.activate_credential(cred, secret))


@pytest.mark.parametrize("ek_alg,ak_alg", [("rsa", "rsa"), ("ecc", "ecc"), ("rsa", "ecc"), ("ecc", "rsa")])
def test_activation_roundtrip(swtpm: Swtpm, ek_alg: str, ak_alg: str) -> None:  # noqa: F811
    with TPM(swtpm.tcti, ek_alg=ek_alg, ak_alg=ak_alg) as tpm:
        ek, ok = _roundtrip(tpm)
        assert ok
        assert ek.tpm_hash == tpm.ek().tpm_hash and len(ek.tpm_hash) == 64
    # The same TPM keeps its EK (hash) across connections; a new AK each time.
    with TPM(swtpm.tcti, ek_alg=ek_alg, ak_alg=ak_alg) as tpm:
        assert _roundtrip(tpm) == (ek, True)


@pytest.mark.parametrize("alg", ["rsa", "ecc"])
def test_make_credential_matches_tpm2_pytss(alg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our direct MakeCredential computes what tpm2-pytss's does, byte for byte, given the same
    seed (RSA; OAEP padding itself is randomised) or the same ephemeral key (ECC)."""
    import secrets

    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from tpm2_pytss.internal import crypto as tss_crypto
    from tpm2_pytss.utils import make_credential as tss_make_credential

    name = bytes.fromhex("000b") + bytes(range(32))
    credential = bytes(range(100, 132))
    if alg == "rsa":
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(65537, 2048)
        seed = bytes(range(32))
        monkeypatch.setattr(secrets, "token_bytes", lambda n: seed[:n])
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        monkeypatch.setattr(ec, "generate_private_key", lambda *a, **k: ephemeral)
        monkeypatch.setattr(tss_crypto.ec, "generate_private_key", lambda *a, **k: ephemeral)
    ours = A.make_credential(private.public_key(), credential, name)
    theirs = tss_make_credential(A.ek_tpm_public(private.public_key()), credential, name)
    assert ours[0] == theirs[0].marshal()
    if alg == "ecc":
        assert ours[1] == theirs[1].marshal()
    else:
        assert isinstance(private, rsa.RSAPrivateKey)
        label = b"IDENTITY\x00"
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
        assert private.decrypt(ours[1][2:], oaep) == seed
        assert int.from_bytes(ours[1][:2], "big") == len(ours[1]) - 2


def test_emulated_seed_is_deterministic(swtpm_factory: Callable[[], Swtpm]) -> None:  # noqa: F811
    hashes_seen: dict[int, set[str]] = {}
    for seed in (1, 1, 7):
        sw = swtpm_factory()  # a fresh TPM (fresh endorsement seed) each time
        with TPM(sw.tcti, emulated_seed=seed, ak_alg="ecc") as tpm:
            ek, ok = _roundtrip(tpm)
            assert ok
            hashes_seen.setdefault(seed, set()).add(ek.tpm_hash)
    assert len(hashes_seen[1]) == 1, "a fixed seed must give the same TPM hash every time"
    assert hashes_seen[1] != hashes_seen[7]


@pytest.mark.parametrize("seed", [35, 280, 440])
def test_emulated_seed_whose_key_has_a_leading_zero_byte(
    swtpm_factory: Callable[[], Swtpm],  # noqa: F811
    seed: int,
) -> None:
    """Seeds 35, 280 and 440 give an EK whose x, y or private scalar starts with a zero byte.
    tpm2-pytss's from_pem trims such values; the TPM then used a 31-byte x in KDFe while the
    operator used the curve's 32 bytes, and ActivateCredential failed its integrity check (1 in
    about 100 random seeds: test_register_cli failed so in CI)."""
    with TPM(swtpm_factory().tcti, emulated_seed=seed, ak_alg="ecc") as tpm:
        assert _roundtrip(tpm)[1]


def test_answer_from_another_tpm_fails(swtpm_factory: Callable[[], Swtpm]) -> None:  # noqa: F811
    """EK of machine A with an AK of machine B: B cannot activate a credential for A's EK."""
    a, b = swtpm_factory(), swtpm_factory()
    with TPM(a.tcti, ek_alg="ecc", ak_alg="ecc") as ta, TPM(b.tcti, ek_alg="ecc", ak_alg="ecc") as tb:
        data_a, data_b = ta.attestation_data(), tb.attestation_data()
        ek_a = A.parse_ek(data_a.ek_pem)
        challenge = A.make_challenge(ek_a, A.check_ak_parameters(data_b.ak))
        with pytest.raises(TPMError):
            tb.activate_credential(challenge.credential, challenge.encrypted_secret)
        # And A's TPM refuses a credential bound to B's AK name.
        with pytest.raises(TPMError):
            ta.activate_credential(challenge.credential, challenge.encrypted_secret)


def test_forged_answer_rejected(swtpm: Swtpm) -> None:  # noqa: F811
    with TPM(swtpm.tcti, ek_alg="ecc", ak_alg="ecc") as tpm:
        data = tpm.attestation_data()
        challenge = A.make_challenge(A.parse_ek(data.ek_pem), A.check_ak_parameters(data.ak))
        assert not A.verify_answer(challenge, b"\x00" * 32)
        assert not A.verify_answer(challenge, b"")
        answer = tpm.activate_credential(challenge.credential, challenge.encrypted_secret)
        assert A.verify_answer(challenge, answer)
        # A second challenge has a different secret: replaying the first answer fails.
        second = A.make_challenge(A.parse_ek(data.ek_pem), A.check_ak_parameters(data.ak))
        assert not A.verify_answer(second, answer)


def test_tampered_ak_parameters_rejected(swtpm: Swtpm) -> None:  # noqa: F811
    with TPM(swtpm.tcti, ek_alg="ecc", ak_alg="rsa") as tpm:
        ak = tpm.attestation_data().ak
    A.check_ak_parameters(ak)

    def flip(b: bytes, i: int) -> bytes:
        return b[:i] + bytes([b[i] ^ 1]) + b[i + 1 :]

    bad = [
        dataclasses.replace(ak, create_signature=flip(ak.create_signature, len(ak.create_signature) - 1)),
        dataclasses.replace(ak, create_data=flip(ak.create_data, len(ak.create_data) - 1)),
        dataclasses.replace(ak, create_attestation=flip(ak.create_attestation, 0)),  # magic
        dataclasses.replace(ak, public=flip(ak.public, len(ak.public) - 1)),  # modulus → name
        dataclasses.replace(ak, public=ak.public + b"\x00"),
        dataclasses.replace(ak, create_signature=b"1234"),
        dataclasses.replace(ak, public=b""),
    ]
    # objectAttributes live at offset 4 of TPMT_PUBLIC (type, nameAlg, attributes): clear restricted.
    attrs = int.from_bytes(ak.public[4:8], "big") & ~0x10000
    bad.append(dataclasses.replace(ak, public=ak.public[:4] + attrs.to_bytes(4, "big") + ak.public[8:]))
    for params in bad:
        with pytest.raises(A.AttestationError):
            A.check_ak_parameters(params)


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test TPM CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _ek_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, ek_key: A.PublicKey
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.subject)
        .public_key(ek_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DirectoryName(
                        x509.Name([x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:53574D20")])
                    )
                ]
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )


def test_ek_certificate_from_nv_and_chain(swtpm: Swtpm) -> None:  # noqa: F811
    ca_key, ca = _ca()
    with TPM(swtpm.tcti) as tpm:
        assert tpm.ek().certificate is None
        der = _ek_cert(ca_key, ca, tpm.ek().key).public_bytes(serialization.Encoding.DER)
        # Provision the certificate like a manufacturer: NV index 0x01c00002, zero padded.
        blob = der + b"\x00" * 16
        nv = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=RSA_EK_CERT_INDEX,
                nameAlg=TPM2_ALG.SHA256,
                dataSize=len(blob),
                attributes=TPMA_NV.OWNERWRITE | TPMA_NV.AUTHREAD | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA,
            )
        )
        handle = tpm.esys.nv_define_space(b"", nv, ESYS_TR.OWNER)
        for off in range(0, len(blob), 512):
            tpm.esys.nv_write(handle, blob[off : off + 512], off, auth_handle=ESYS_TR.OWNER)
    with TPM(swtpm.tcti) as tpm:
        assert tpm.ek().certificate == der
        data = tpm.attestation_data()
        assert data.ek_pem.startswith(b"-----BEGIN CERTIFICATE-----")
        ek = A.parse_ek(data.ek_pem)
        assert ek.tpm_hash == tpm.ek().tpm_hash  # hash of the key, not of the certificate
        ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
        A.verify_ek_certificate(ek, ca_pem)
        _, other = _ca()
        with pytest.raises(A.AttestationError):
            A.verify_ek_certificate(ek, other.public_bytes(serialization.Encoding.PEM).decode())
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=60)
        with pytest.raises(A.AttestationError):
            A.verify_ek_certificate(ek, ca_pem, now=later)


def test_bare_ek_rejected_when_ca_configured() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ek = A.parse_ek(pem)
    _, ca = _ca()
    with pytest.raises(A.AttestationError):
        A.verify_ek_certificate(ek, ca.public_bytes(serialization.Encoding.PEM).decode())


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"garbage",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
)
def test_bad_ek_pem(pem: bytes) -> None:
    with pytest.raises(A.AttestationError):
        A.parse_ek(pem)


def test_provisioned_ek_is_read_not_recreated(swtpm: Swtpm) -> None:  # noqa: F811
    with TPM(swtpm.tcti) as tpm:
        transient_hash = tpm.ek().tpm_hash
        assert tpm.ek().transient
        assert tpm.provision_ek() == 0x81010001
    with TPM(swtpm.tcti) as tpm:
        assert not tpm.ek().transient and tpm.ek().tpm_hash == transient_hash
        assert _roundtrip(tpm) == (A.parse_ek(tpm.ek().pem), True)
