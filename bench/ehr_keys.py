"""An EHR's signing keys and bearer tokens, for the benchmarks and the security tests
(``tests.security_helpers`` adds forged tokens, a JWKS server and a connection recorder).

Every token made here is remembered in ``MINTED``: the tests check that none ever reaches the service's log.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

MINTED: list[str] = []
"""Every bearer token and FHIR access token the tests made: none may ever appear in the service's log."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """One signing key of an EHR (EC P-384 for ES384, RSA 2048 for RS*/PS*)."""

    def __init__(self, alg: str = "ES384", kid: str | None = None):
        self.alg = alg
        self.kid = kid or f"kid-{uuid.uuid4().hex[:12]}"
        if alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]
            self.private_key = ec.generate_private_key(curve)
            self.algorithm = jwt.algorithms.ECAlgorithm
        else:
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.algorithm = jwt.algorithms.RSAAlgorithm

    def jwk(self) -> dict[str, Any]:
        jwk = self.algorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid, "typ": "JWT", **header}
        token = jwt.encode(claims, self.private_key, algorithm=self.alg, headers=headers)
        MINTED.append(token)
        return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
