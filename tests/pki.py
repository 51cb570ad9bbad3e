"""Certificates and kubeconfigs for a throwaway control plane on loopback (see tests/control_plane.py).

One CA signs everything: the API server's serving certificate (for 127.0.0.1 and localhost) and the
client certificates it accepts through ``--client-ca-file``. A client certificate's CN is the user
name and its O the groups, so ``O=system:masters`` is cluster-admin. The ServiceAccount token signing
key is a key of its own. ECDSA P-256 throughout: generated in milliseconds, and accepted by
kube-apiserver and kube-controller-manager for TLS and for ServiceAccount tokens alike.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ADMIN_USER = "envtest-admin"
ADMIN_GROUP = "system:masters"


@dataclasses.dataclass(frozen=True)
class Pki:
    """The files :func:`write_pki` made, by the name each command line uses."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def serving_cert(self) -> Path:
        return self.folder / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.folder / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.folder / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.folder / "admin.key"

    @property
    def service_account_key(self) -> Path:
        return self.folder / "sa.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.folder / "sa.pub"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


def _certificate(
    subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
    *, ca: bool = False, usage: x509.ObjectIdentifier | None = None, names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=7))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                            crl_sign=ca, encipher_only=False, decipher_only=False), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def write_pki(folder: Path) -> Pki:
    """A CA, the API server's serving pair, a cluster-admin client pair and the ServiceAccount key pair."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder)
    ca_key, ca_name = _key(), _name("envtest-ca")
    _write_cert(pki.ca_cert, _certificate(ca_name, ca_key, ca_name, ca_key, ca=True))

    serving_key = _key()
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]  # the `kubernetes` Service
    _write_cert(pki.serving_cert, _certificate(_name("kube-apiserver"), serving_key, ca_name, ca_key,
                                               usage=ExtendedKeyUsageOID.SERVER_AUTH, names=names))
    _write_key(pki.serving_key, serving_key)

    admin_key = _key()
    _write_cert(pki.admin_cert, _certificate(_name(ADMIN_USER, ADMIN_GROUP), admin_key, ca_name, ca_key,
                                             usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    _write_key(pki.admin_key, admin_key)

    sa_key = _key()
    _write_key(pki.service_account_key, sa_key)
    pki.service_account_public_key.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def write_kubeconfig(
    path: Path, server: str, ca_file: Path, *, token: str | None = None,
    cert_file: Path | None = None, key_file: Path | None = None,
) -> Path:
    """A one-context kubeconfig: the CA by path, and either a bearer token or a client certificate."""
    user: dict[str, Any] = {"token": token} if token else {
        "client-certificate": str(cert_file), "client-key": str(key_file)}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "envtest",
        "clusters": [{"name": "envtest", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "envtest", "user": user}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "envtest"}}],
    }))
    path.chmod(0o600)
    return path
