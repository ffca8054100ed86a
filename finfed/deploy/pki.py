"""Certificates and keys for a consortium, made with the `cryptography` package.

The coordinator serves TLS with a certificate signed by the consortium's own
certificate authority; each site proves who it is with an EC P-384 key pair in
OpenSSH format, the kind Flower's SuperNode authentication expects
(``flower-supernode --auth-supernode-private-key``, ``flwr supernode register``).
Private keys are written readable by their owner only (0600).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from finfed.errors import ConfigError

# Flower signs SuperNode requests with ECDSA and accepts NIST curves; P-384 is what its docs generate.
SITE_KEY_CURVE = ec.SECP384R1
# The SuperLink starts its own SuperExec, which reaches the Runtime API over loopback with TLS.
LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class KeyPair:
    private_key: Path
    public_key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (no window where others could read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "finfed consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_ca(folder: Path, common_name: str, days: int = 3650) -> tuple[Path, Path]:
    """A self-signed CA: ``ca.key`` (0600) and ``ca.pem``. Returns (certificate, key)."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = _name(common_name)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _subject_alt_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, *LOOPBACK_NAMES]):  # ordered, without repeats
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def create_server_certificate(folder: Path, ca_cert: Path, ca_key: Path, hosts: list[str],
                              days: int = 825) -> tuple[Path, Path]:
    """The coordinator's TLS certificate for ``hosts`` (names or IPs; loopback always added)."""
    if not hosts:
        raise ConfigError("give at least one coordinator host name or IP address (--coordinator-host)")
    issuer = load_certificate(ca_cert, "CA certificate")
    signing_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(_subject_alt_names(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),
                           critical=False)
            .sign(signing_key, hashes.SHA384()))
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def create_site_keys(folder: Path, name: str) -> KeyPair:
    """A site's authentication key pair: ``<name>.key`` (OpenSSH, 0600) and ``<name>.pub``."""
    key = ec.generate_private_key(SITE_KEY_CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH) + f" {name}\n".encode()
    pair = KeyPair(private_key=folder / f"{name}.key", public_key=folder / f"{name}.pub")
    write_private(pair.private_key, private)
    pair.public_key.write_bytes(public)
    return pair


# --------------------------------------------------------------------------- checks

def load_certificate(path: Path, what: str) -> x509.Certificate:
    """Read a PEM certificate or raise naming the file and what it should be."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except PermissionError:
        raise ConfigError(f"{what} {path} is not readable by this user") from None
    except ValueError as exc:
        raise ConfigError(f"{what} {path} is not a PEM-encoded X.509 certificate ({exc})") from None


def check_issued_by(cert_path: Path, ca_path: Path, what: str) -> None:
    """Refuse a certificate the CA did not sign, or one outside its validity period."""
    cert, ca = load_certificate(cert_path, what), load_certificate(ca_path, "CA certificate")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{what} {cert_path} was not signed by the CA in {ca_path}") from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(f"{what} {cert_path} is valid from {cert.not_valid_before_utc:%Y-%m-%d} "
                          f"to {cert.not_valid_after_utc:%Y-%m-%d}, not now")


def certificate_hosts(cert_path: Path) -> list[str]:
    """The DNS names and IP addresses a server certificate is valid for."""
    cert = load_certificate(cert_path, "server certificate")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*names.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in names.get_values_for_type(x509.IPAddress))]


def check_site_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The site's key as Flower will read it: unencrypted OpenSSH, EC on a NIST curve."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"site private key {path} does not exist")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise ConfigError(f"site private key {path} is not readable by this user") from None
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"site private key {path} is not an unencrypted OpenSSH private key ({exc}); "
                          "Flower expects an EC P-384 key, e.g. `ssh-keygen -t ecdsa -b 384 -N ''`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"site private key {path} is a {type(key).__name__.lstrip('_')}, but Flower's "
                          "SuperNode authentication needs an EC key (P-384: `ssh-keygen -t ecdsa -b 384`)")
    return key


def check_site_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A site's public key as ``flwr supernode register`` will read it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"site public key {path} does not exist")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"site public key {path} is not an OpenSSH public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"site public key {path} is not an EC key; Flower needs EC P-384")
    return key


def check_private_permissions(path: Path) -> None:
    """A private key others can read is refused: it would let them pose as this site or server."""
    mode = Path(path).stat().st_mode & 0o077
    if os.name == "posix" and mode:
        raise ConfigError(f"private key {path} is readable by group or others (mode "
                          f"{Path(path).stat().st_mode & 0o777:o}); run `chmod 600 {path}`")
