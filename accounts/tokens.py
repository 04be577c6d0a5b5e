import hashlib
import secrets


def new_token() -> tuple[str, str]:
    """A random URL-safe token and the SHA-256 hex digest we store instead of it."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
