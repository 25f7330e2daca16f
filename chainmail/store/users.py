"""Users and their passwords (James's UsersRepository), kept in the shared SQLite database.

Usernames are full, lower-cased addresses (``bob@example.org``): virtual
hosting is always on.  :meth:`UsersRepository.username_for` maps a recipient
or sender address to its username the way James's ``getUsername`` does
(lower-cased, ``+detail`` removed from the local part).  A UTF-8 local part
(RFC 6531) is kept in Unicode normalisation form NFC wherever a username is
stored or looked up, so ``ü`` written composed or decomposed is one user;
domains take their IDNA (``xn--``) form.

Passwords are never stored.  Each user has a salted scrypt hash, written as a
self-describing PHC-style string::

    $scrypt$ln=14,r=8,p=1$<salt, base64>$<hash, base64>

(N = 2**ln, 16-byte random salt, 32-byte hash, standard base64 without
padding).  The parameters travel with each hash, so they can be raised later:
:meth:`UsersRepository.verify` re-hashes a password with the current
parameters after a successful check of an older hash.  ``$pbkdf2-sha256$i=..``
hashes (e.g. imported from another system) are verified too and upgraded the
same way.

``contains()`` is called for every RCPT on the event loop, so it answers from
an in-memory set refreshed when ``PRAGMA data_version`` says another
connection changed the database (checked at most once per
``refresh_interval``).  ``verify()`` is slow by design (about 50 ms of CPU;
hashlib releases the GIL while hashing): call it from a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import unicodedata
from typing import Any

from chainmail.store import sqlite as _sqlite
from chainmail.store.domains import normalize_domain

__all__ = [
    "SCRYPT_LN",
    "SCRYPT_P",
    "SCRYPT_R",
    "PasswordPolicy",
    "UserExistsError",
    "UsersRepository",
    "load_password_policy",
    "check_password",
    "hash_password",
    "needs_rehash",
    "nfc",
    "normalize_username",
    "username_for",
]

log = logging.getLogger("chainmail.store.users")

COMPONENT = "users"
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE users ("
        " username TEXT PRIMARY KEY NOT NULL,"
        " password_hash TEXT NOT NULL"
        ") WITHOUT ROWID",
    ),
]

# scrypt cost: N = 2**14, r = 8, p = 1 uses 16 MiB and takes about 50 ms on the
# reference machine (see docs/storage.md).  Raise SCRYPT_LN to make new hashes
# (and hashes re-written after a successful login) more expensive.
SCRYPT_LN = 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32

# Sanity bounds for parameters read back from the database.
_MAX_LN, _MAX_R, _MAX_P, _MAX_PBKDF2_ITERATIONS = 20, 32, 16, 10_000_000

_DUMMY_SALT = os.urandom(SALT_BYTES)
_DUMMY_DIGEST = os.urandom(HASH_BYTES)


class UsersUnavailable(RuntimeError):
    """The users cannot be read now (their database is unreachable): a temporary failure,
    not a wrong password."""


class UserExistsError(ValueError):
    """``add()`` of a username that is already there."""


# -- addresses --------------------------------------------------------------------------


def nfc(text: str) -> str:
    """``text`` in Unicode normalisation form NFC (ASCII is returned as it is)."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def username_for(address: Any) -> str:
    """James's ``getUsername``: the lower-cased full address, ``+detail`` stripped.

    ``"Bob+tag@Example.ORG"`` -> ``"bob@example.org"``.  A leading ``+`` is not a
    detail separator (``"+x@d"`` stays).  A UTF-8 local part is put in NFC.  Non-ASCII domains and address literals
    get their canonical form (``xn--``, ``[ipv6:...]``).  An address without a
    domain keeps none: callers complete it with the default domain first.
    """
    text = str(address)
    local, at, domain = text.rpartition("@")
    if not at:
        local, domain = text, ""
    plus = local.find("+")
    if plus > 0:
        local = local[:plus]
    local = nfc(local.lower())
    if not at:
        return local
    domain = domain.lower()
    if domain[-1:] == "." or domain[:1] == "[" or not domain.isascii():
        try:
            domain = normalize_domain(domain)
        except (ValueError, TypeError):
            pass
    return f"{local}@{domain}"


def normalize_username(username: str) -> str:
    """The stored form of a new username; ``ValueError`` (with the reason) if it can't be one.

    A username is a full address ``local@domain``: the local part a dot-atom
    (letters, digits and ``!#$%&'*-/=?^_`{|}~`` between single dots; UTF-8
    allowed), no ``+`` (it separates the detail, so ``bob+x@d`` always means
    ``bob@d``), no quoted local parts; a valid domain.  Lower-cased, in NFC.
    """
    from chainmail.protocol.grammar import GrammarError, parse_mailbox

    if not isinstance(username, str):
        raise TypeError(f"username must be a str, not {type(username).__name__}")
    text = username.strip()
    if "@" not in text:
        raise ValueError(f"invalid username {username!r}: must be a full address, user@domain")
    if text.startswith('"'):
        raise ValueError(f"invalid username {username!r}: quoted local parts are not supported")
    try:
        mailbox = parse_mailbox(text, utf8=True, allow_no_domain=False)
    except GrammarError as exc:
        raise ValueError(f"invalid username {username!r}: {exc}") from None
    if "+" in mailbox.local:
        raise ValueError(
            f"invalid username {username!r}: '+' separates an address detail "
            "(mail to bob+tag@d goes to user bob@d) and cannot be part of a username"
        )
    try:
        domain = normalize_domain(mailbox.domain or "")
    except ValueError as exc:
        raise ValueError(f"invalid username {username!r}: {exc}") from None
    return f"{nfc(mailbox.local.lower())}@{domain}"


def _lookup_key(username: Any) -> str:
    """How ``contains``/``verify`` spell a username given by a client: lower-cased."""
    text = nfc(str(username).strip().lower())
    if text[-1:] == ".":
        text = text[:-1]
    local, at, domain = text.rpartition("@")
    if at and (domain[:1] == "[" or not domain.isascii()):
        try:
            return f"{local}@{normalize_domain(domain)}"
        except (ValueError, TypeError):
            pass
    return text


# -- password hashes --------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen,
                          maxmem=128 * r * (n + p + 2) + (1 << 20))


def _password_bytes(password: str | bytes) -> bytes:
    if isinstance(password, bytes):
        return password
    if isinstance(password, str):
        return password.encode("utf-8", "surrogatepass")
    raise TypeError(f"password must be str or bytes, not {type(password).__name__}")


def hash_password(password: str | bytes, *, ln: int = SCRYPT_LN, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    """A new ``$scrypt$ln=..,r=..,p=..$salt$hash`` string for ``password`` (random salt)."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(_password_bytes(password), salt, ln, r, p, HASH_BYTES)
    return f"$scrypt$ln={ln},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def _parse(stored: str) -> tuple[str, dict[str, int], bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 5 or parts[0] != "":
        raise ValueError("not a $scheme$params$salt$hash string")
    _, scheme, param_text, salt_text, digest_text = parts
    params: dict[str, int] = {}
    for item in param_text.split(","):
        key, eq, value = item.partition("=")
        if not eq or not value.isdigit() or key in params:
            raise ValueError(f"bad parameter {item!r}")
        params[key] = int(value)
    salt, digest = _unb64(salt_text), _unb64(digest_text)
    if not salt or not digest:
        raise ValueError("empty salt or hash")
    if scheme == "scrypt":
        if set(params) != {"ln", "r", "p"}:
            raise ValueError("scrypt needs ln, r and p")
        if not (1 <= params["ln"] <= _MAX_LN and 1 <= params["r"] <= _MAX_R and 1 <= params["p"] <= _MAX_P):
            raise ValueError("scrypt parameters out of range")
    elif scheme == "pbkdf2-sha256":
        if set(params) != {"i"} or not 1 <= params["i"] <= _MAX_PBKDF2_ITERATIONS:
            raise ValueError("pbkdf2-sha256 needs i (iterations) in range")
    else:
        raise ValueError(f"unknown scheme {scheme!r}")
    return scheme, params, salt, digest


def check_password(stored: str, password: str | bytes) -> bool:
    """Does ``password`` match the hash string ``stored``?  Constant-time comparison.
    ``ValueError`` if ``stored`` is not a hash this module understands."""
    scheme, params, salt, digest = _parse(stored)
    pw = _password_bytes(password)
    if scheme == "scrypt":
        computed = _scrypt(pw, salt, params["ln"], params["r"], params["p"], len(digest))
    else:
        computed = hashlib.pbkdf2_hmac("sha256", pw, salt, params["i"], len(digest))
    return hmac.compare_digest(computed, digest)


def needs_rehash(stored: str) -> bool:
    """Is ``stored`` weaker than (or different from) what :func:`hash_password` makes now?"""
    try:
        scheme, params, salt, digest = _parse(stored)
    except ValueError:
        return True
    if scheme != "scrypt":
        return True
    return (params["ln"] < SCRYPT_LN or params["r"] < SCRYPT_R or params["p"] < SCRYPT_P
            or len(salt) < SALT_BYTES or len(digest) < HASH_BYTES)


def _dummy_check(password: str | bytes) -> None:
    """Spend the time of a real check, so an unknown user can't be told by timing."""
    try:
        pw = _password_bytes(password)
    except TypeError:
        pw = b""
    hmac.compare_digest(_scrypt(pw, _DUMMY_SALT, SCRYPT_LN, SCRYPT_R, SCRYPT_P, HASH_BYTES),
                        _DUMMY_DIGEST)


# -- the repository ---------------------------------------------------------------------


class UsersRepository(_sqlite.RefreshedCache):
    """The users.  One instance per process; thread-safe.

    ``domains`` (a :class:`~chainmail.store.domains.DomainStore`, or anything
    with ``contains(domain)``): when given, ``add`` refuses users whose domain is
    not local.
    """

    def __init__(self, db_path: str | os.PathLike[str], *, domains: Any = None,
                 refresh_interval: float = 1.0) -> None:
        self.domains = domains
        self._open(db_path, COMPONENT, MIGRATIONS, refresh_interval)

    # -- addresses

    @staticmethod
    def username_for(address: Any) -> str:
        """James's ``getUsername``: see :func:`username_for`."""
        return username_for(address)

    # -- reading

    def contains(self, username: str) -> bool:
        """Is there a user ``username``?  Case-insensitive; fast (in-memory set).

        ``username`` is a username, not a recipient: pass
        ``username_for(rcpt)`` to accept ``bob+tag@d`` for user ``bob@d``.
        """
        self._refresh()
        users = self._users
        if username in users:
            return True
        return _lookup_key(username) in users

    def list(self) -> list[str]:
        """Every username, sorted."""
        with self._lock:
            rows = self._conn.execute("SELECT username FROM users ORDER BY username").fetchall()
        return [name for (name,) in rows]

    def verify(self, username: str, password: str | bytes) -> bool:
        """Is ``password`` the password of ``username``?

        Slow by design (one scrypt, about 50 ms): call it from a worker thread.
        An unknown user costs the same time as a wrong password.  After a
        successful check of a hash made with weaker parameters, the password is
        re-hashed with the current ones.
        """
        key = _lookup_key(username)
        stored = self._stored_hash(key)
        if stored is None:
            _dummy_check(password)
            return False
        try:
            ok = check_password(stored, password)
        except ValueError as exc:
            log.error("user %s: unusable password hash in the database (%s)", key, exc)
            _dummy_check(password)
            return False
        except TypeError:
            return False
        if ok and needs_rehash(stored):
            self._upgrade(key, stored, password)
        return ok

    def password_hashes(self) -> dict[str, str]:
        """Every user and its stored password hash (for moving the users to another store:
        the hashes are copied, no password is known)."""
        return {name: stored for name in self.list()
                if (stored := self._stored_hash(_lookup_key(name))) is not None}

    def _new_user(self, username: str, password: str) -> str:
        """The stored form of a user about to be added; ``ValueError`` saying why it
        cannot be (invalid name, domain not local, empty password, already there)."""
        name = normalize_username(username)
        _check_new_password(password)
        if self.domains is not None:
            domain = name.rpartition("@")[2]
            if not self.domains.contains(domain):
                raise ValueError(f"cannot add user {name}: {domain} is not a local domain")
        if self.contains(name):
            raise UserExistsError(f"user {name} already exists")
        return name

    def _stored_hash(self, key: str) -> str | None:
        """The stored password hash of the user ``key`` (its lookup form), if any."""
        with self._lock:
            row = self._conn.execute(
                "SELECT password_hash FROM users WHERE username = ?", (key,)).fetchone()
        return None if row is None else row[0]

    # -- changing

    def add(self, username: str, password: str) -> None:
        """Add a user.  ``ValueError`` saying why if the username is invalid, its
        domain is not local (when ``domains`` was given), the password is empty,
        or the user exists (:class:`UserExistsError`, a ``ValueError``)."""
        name = self._new_user(username, password)
        stored = hash_password(password)
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO users (username, password_hash) VALUES (?, ?)"
                " ON CONFLICT (username) DO NOTHING", (name, stored))
            self._reload_locked()
        if cur.rowcount != 1:
            raise UserExistsError(f"user {name} already exists")

    def remove(self, username: str) -> bool:
        """Remove a user; ``False`` if there was none."""
        key = _lookup_key(username)
        with self._lock:
            cur = self._conn.execute("DELETE FROM users WHERE username = ?", (key,))
            self._reload_locked()
        return cur.rowcount == 1

    def set_password(self, username: str, password: str) -> bool:
        """Change a user's password; ``False`` if there is no such user.
        ``ValueError`` if the password is empty."""
        _check_new_password(password)
        key = _lookup_key(username)
        stored = hash_password(password)
        with self._lock:
            cur = self._conn.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?", (stored, key))
            self._reload_locked()
        return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> UsersRepository:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals

    def _upgrade(self, key: str, old: str, password: str | bytes) -> None:
        new = hash_password(password)
        try:
            with self._lock:
                # Only if nobody changed the password meanwhile.
                self._conn.execute(
                    "UPDATE users SET password_hash = ? WHERE username = ? AND password_hash = ?",
                    (new, key, old))
                self._reload_locked()
        except Exception as exc:  # a read-only database must not fail the login
            log.warning("user %s: could not upgrade the password hash: %s", key, exc)

    def _load(self, conn) -> None:
        self._users = frozenset(name for (name,) in conn.execute("SELECT username FROM users"))


#: where the password policy is configured (``<passwordPolicy minLength="..."/>``)
USERSREPOSITORY_FILE = "usersrepository.xml"
DEFAULT_MIN_LENGTH = 8


class PasswordPolicy:
    """What a new password must satisfy (``chainmail user add|passwd``): at least
    ``min_length`` characters.  ``source`` says where the rule comes from, for messages."""

    def __init__(self, min_length: int = DEFAULT_MIN_LENGTH, source: str = "") -> None:
        self.min_length = min_length
        self.source = source or f"the default; set <passwordPolicy minLength=\"...\"/> in " \
                                f"{USERSREPOSITORY_FILE}"

    def check(self, password: str | bytes) -> None:
        """``ValueError`` with a one-line reason if ``password`` is too weak."""
        _check_new_password(password)
        length = len(password.decode("utf-8", "replace") if isinstance(password, bytes)
                     else password)
        if length < self.min_length:
            raise ValueError(f"password refused: {length} character(s), at least "
                             f"{self.min_length} are required ({self.source})")


def load_password_policy(conf_dir: str | os.PathLike[str]) -> PasswordPolicy:
    """The policy of ``<conf>/usersrepository.xml`` (James's file; chainmail reads only its
    ``<passwordPolicy minLength="..."/>`` element); the default without the file or element.
    ``ConfigError`` naming the file and line for a bad value."""
    from chainmail.config.errors import ConfigError
    from chainmail.config.xml import first_child, parse_file
    path = os.path.join(os.fspath(conf_dir), USERSREPOSITORY_FILE)
    if not os.path.exists(path):
        return PasswordPolicy()
    root = parse_file(path)
    policy = root if root.tag == "passwordPolicy" else first_child(root, "passwordPolicy")
    if policy is None:
        return PasswordPolicy()
    value = policy.get("minLength")
    if value is None:
        return PasswordPolicy()
    try:
        minimum = int(value.strip())
    except ValueError:
        minimum = -1
    if not 1 <= minimum <= 1024:
        raise ConfigError(path, policy.sourceline, "passwordPolicy",
                          f"minLength={value!r}: expected a whole number from 1 to 1024")
    return PasswordPolicy(minimum, f"minLength in {path}:{policy.sourceline}")


def _check_new_password(password: Any) -> None:
    if not isinstance(password, (str, bytes)):
        raise TypeError(f"password must be str or bytes, not {type(password).__name__}")
    if not password:
        raise ValueError("the password must not be empty")
