"""The operator's private certificate authority, for TLS on the broker and the artifact server.

``tls/ca.pem`` and ``tls/ca.key`` are made once and kept (every device's config carries the
CA); ``tls/server.pem`` and ``tls/server.key`` are issued by it for the names the devices use
to reach the broker and the artifact server, and issued again when those names change.
Keys are written mode 0600 and never replaced in place by a weaker file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.shared.errors import ConfigError

from ._files import write_private

CA_DAYS = 3650
SERVER_DAYS = 825  # what browsers and most TLS stacks still accept for a leaf


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and the server's certificate live, and the names the certificate has."""

    folder: Path
    names: tuple[str, ...]

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def ca_pem(self) -> str:
        try:
            return self.ca_cert.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the CA certificate {self.ca_cert}: {exc}") from exc


def tls_folder(home: Path) -> Path:
    return home / "tls"


def existing_tls(home: Path) -> TlsFiles | None:
    """The home's TLS files when the CA and a server certificate exist, else None."""
    folder = tls_folder(home)
    files = TlsFiles(folder, ())
    if not (files.ca_cert.is_file() and files.server_cert.is_file()):
        return None
    return TlsFiles(folder, _names_of(files.server_cert))


def ensure_tls(home: Path, names: list[str]) -> TlsFiles:
    """Make the CA if there is none, and a server certificate for ``names`` (host names or
    IP addresses) unless the current one already has exactly those names."""
    wanted = tuple(sorted(set(names)))
    if not wanted:
        raise ConfigError("a server certificate needs at least one host name or address")
    folder = tls_folder(home)
    files = TlsFiles(folder, wanted)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not files.ca_cert.is_file():
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_cert = _ca_certificate(ca_key)
            write_private(files.ca_key, _key_pem(ca_key))
            write_private(files.ca_cert, _cert_pem(ca_cert), mode=0o644)
        if files.server_cert.is_file() and _names_of(files.server_cert) == wanted:
            return files
        loaded = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{files.ca_key} is not the EC key edgefleet made")
        ca_key = loaded
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(files.server_key, _key_pem(key))
        cert = _server_certificate(key, ca_key, ca_cert, wanted)
        write_private(files.server_cert, _cert_pem(cert), mode=0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write the TLS files in {folder}: {exc}") from exc
    except ValueError as exc:  # a key or certificate file that is not what we wrote
        raise ConfigError(f"the TLS files in {folder} are unreadable: {exc}") from exc
    return files


def _names_of(cert_path: Path) -> tuple[str, ...]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return tuple(sorted(names))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet private CA")])
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: tuple[str, ...],
) -> x509.Certificate:
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()
