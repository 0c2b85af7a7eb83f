"""TLS for any listening endpoint (``tls_cert``/``tls_key``): the site is
wrapped in TLS itself, so a socket passed by systemd serves wss:// and
https:// just like an ``ssl:`` endpoint does."""

from __future__ import annotations

import re
from pathlib import Path

from OpenSSL import crypto
from twisted.internet import ssl

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def server_options(cert_file: str, key_file: str) -> ssl.CertificateOptions:
    """The server certificate (first in the file), the chain after it, and
    the key; fails if the key does not match the certificate."""
    certificates = _PEM_CERTIFICATE.findall(Path(cert_file).read_bytes())
    if not certificates:
        raise ValueError(f"no PEM certificate in {cert_file}")
    key = ssl.KeyPair.load(Path(key_file).read_bytes(), crypto.FILETYPE_PEM)
    leaf = ssl.PrivateCertificate.load(
        certificates[0], key, crypto.FILETYPE_PEM
    )  # checks they match
    chain = [ssl.Certificate.loadPEM(pem).original for pem in certificates[1:]]
    return ssl.CertificateOptions(
        privateKey=leaf.privateKey.original,
        certificate=leaf.original,
        extraCertChain=chain,
    )
