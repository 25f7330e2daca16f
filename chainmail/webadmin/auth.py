"""JWT bearer tokens for WebAdmin, checked as James does: signed by the configured public
key (RS256 or ES256), not expired, with a subject and the claim ``admin: true``."""

from __future__ import annotations

from typing import Any

from ..config.errors import ConfigError

__all__ = ["JwtVerifier", "ALGORITHMS"]

ALGORITHMS = ("RS256", "ES256")


class JwtVerifier:
    """``verify(authorization_header)`` -> None when the token is good, else why not."""

    def __init__(self, path: str, *, file: str = "", line: int | None = None) -> None:
        from joserfc.jwk import import_key
        try:
            with open(path, "rb") as fh:
                pem = fh.read()
        except OSError as exc:
            raise ConfigError(file, line, "jwt.publickeypem.url",
                              f"cannot read {path}: {exc.strerror}") from None
        self.key: Any = None
        for key_type in ("RSA", "EC"):
            try:
                self.key = import_key(pem, key_type)
                break
            except Exception:
                continue
        if self.key is None or getattr(self.key, "is_private", False):
            raise ConfigError(file, line, "jwt.publickeypem.url",
                              f"{path} is not a PEM public key; expected an RSA or EC public "
                              "key (-----BEGIN PUBLIC KEY-----)")

    def verify(self, authorization: str | None) -> str | None:
        from joserfc import jwt
        from joserfc.errors import JoseError
        if not authorization:
            return "no bearer token (Authorization: Bearer <JWT>)"
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "expected Authorization: Bearer <JWT>"
        try:
            decoded = jwt.decode(token.strip(), self.key, algorithms=list(ALGORITHMS))
            jwt.JWTClaimsRegistry(sub={"essential": True}).validate(decoded.claims)
        except JoseError as exc:
            return f"invalid token: {exc.description or exc.error}"
        except ValueError as exc:
            return f"invalid token: {exc}"
        if decoded.claims.get("admin") is not True:
            return "the token does not carry the claim admin: true"
        return None
