"""Throw-away PKI for one control plane, made with the openssl command line tool.

EC P-256 keys (fast to generate): a CA, the kube-apiserver serving certificate, an admin client
certificate in group ``system:masters``, and the service-account token signing key pair.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

APISERVER_SANS = (
    "IP:127.0.0.1",
    "IP:10.0.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated files."""

    directory: Path

    @property
    def ca_crt(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def admin_crt(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _key(path: Path) -> None:
    _openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path.name,
        cwd=path.parent,
    )
    path.chmod(0o600)


def leaf(pki: Pki, name: str, subject: str, extensions: list[str]) -> tuple[Path, Path]:
    """Sign a new key pair ``<name>.crt``/``<name>.key`` with the CA of ``pki``."""
    _leaf(pki, name, subject, extensions)
    return pki.directory / f"{name}.crt", pki.directory / f"{name}.key"


def client_cert(pki: Pki, name: str, subject: str) -> tuple[Path, Path]:
    """A client certificate (``/O=group/CN=user`` subject) signed by the cluster CA."""
    return leaf(
        pki,
        name,
        subject,
        [
            "basicConstraints=CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=clientAuth",
        ],
    )


def _leaf(pki: Pki, name: str, subject: str, extensions: list[str]) -> None:
    d = pki.directory
    _key(d / f"{name}.key")
    (d / f"{name}.ext").write_text("\n".join(extensions) + "\n")
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=d)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=d,
    )


def generate(directory: Path, extra_sans: tuple[str, ...] = ()) -> Pki:
    """Create every key and certificate under ``directory`` (created if needed).

    ``extra_sans`` (``IP:...``) are added to the API server's certificate, e.g. the address
    a real node reaches it on."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    _key(pki.ca_key)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=finetune-operator-test-ca",
        "-days",
        "3650",
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out",
        "ca.crt",
        cwd=directory,
    )
    _leaf(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        [
            "basicConstraints=CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth",
            "subjectAltName=" + ",".join((*APISERVER_SANS, *extra_sans)),
        ],
    )
    _leaf(
        pki,
        "admin",
        "/O=system:masters/CN=finetune-test-admin",
        [
            "basicConstraints=CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=clientAuth",
        ],
    )
    _key(pki.sa_key)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    return pki
