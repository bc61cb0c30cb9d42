"""Private keys of a signed repository: where each one lives, and loading only those needed.

Every key is a securesystemslib :class:`~securesystemslib.signer.Signer`. Where a key is
is recorded in ``REPO/keys/signers.json`` (``{role: [{"keyid", "uri"}]}``, never served):

* ``file2:PATH``: an unencrypted PKCS#8 PEM file (securesystemslib's ``CryptoSigner``);
* ``encfile:PATH``: a password-encrypted PKCS#8 PEM file (:class:`EncryptedFileSigner`,
  registered here with securesystemslib, so ``Signer.from_priv_key_uri`` loads it too);
* any other scheme securesystemslib knows where its extras are installed (``gcpkms:``,
  ``awskms:``, ``azurekms:``, ``hsm:``, ...).

A relative ``PATH`` is relative to ``REPO/keys``. A file is read as encrypted whenever its
PEM says so, whatever the scheme. The password comes from the caller, else from
``TFEDGE_KEY_PASSWORD``, else from a prompt the caller passes (the CLI asks on a terminal).

Example:
    >>> save_key(Path("keys/targets.pem"), signer, password="s3cret")   # encrypted, 0600
    >>> load_file_signer(Path("keys/targets.pem"), Passwords("s3cret")).public_key.keyid
    '4e1c...'
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tfedge.errors import OtaError, UsageError

PASSWORD_ENV = "TFEDGE_KEY_PASSWORD"
ENCRYPTED_SCHEME = "encfile"
FILE_SCHEMES = ("file2", ENCRYPTED_SCHEME)
SIGNERS_FILE = "signers.json"
PBKDF2_ITERATIONS = 600_000  # OWASP's figure for PBKDF2-HMAC-SHA256 (about 0.2 s per key here)
_ENCRYPTED_HEADER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"

PasswordArg = str | Callable[[str], str] | None


class Passwords:
    """Where passwords for encrypted keys come from, asked at most once per key file.

    ``given`` is a password or a prompt (called with a label such as ``password for
    keys/targets.pem``); ``TFEDGE_KEY_PASSWORD`` wins over a prompt, never over a password.
    """

    def __init__(self, given: PasswordArg = None) -> None:
        self.given = given
        self.good: list[bytes] = []  # passwords that opened a key in this operation

    def candidates(self, label: str) -> Iterator[bytes]:
        """Passwords to try for ``label``: the given or the environment's, else the ones that
        already worked, then (only if they fail) one asked from the prompt."""
        if isinstance(self.given, str):
            yield self.given.encode()
            return
        if os.environ.get(PASSWORD_ENV):
            yield os.environ[PASSWORD_ENV].encode()
            return
        yield from list(self.good)
        if self.given is None:
            if not self.good:
                raise OtaError(
                    f"the {label} is encrypted and no password was given",
                    f"set {PASSWORD_ENV}, or run the command on a terminal to be asked",
                )
            return
        yield self.given(f"password for the {label}").encode()

    def for_new_key(self) -> bytes:
        """The password for a key that replaces an encrypted one: the given or the
        environment's, else one that opened a key in this operation, else a new one."""
        if isinstance(self.given, str) or os.environ.get(PASSWORD_ENV) or not self.good:
            return self.new_password()
        return self.good[0]

    def new_password(self) -> bytes:
        """The password to encrypt new keys with (``tfedge ota init --encrypt-keys``)."""
        if isinstance(self.given, str):
            password = self.given
        elif os.environ.get(PASSWORD_ENV):
            password = os.environ[PASSWORD_ENV]
        elif self.given is not None:
            password = self.given("new password for the private keys")
        else:
            raise OtaError(
                "--encrypt-keys needs a password and none was given",
                f"set {PASSWORD_ENV}, or run the command on a terminal to be asked",
            )
        if not password:
            raise UsageError("the key password is empty", "choose a non-empty password")
        return password.encode()


def is_encrypted(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_ENCRYPTED_HEADER)) == _ENCRYPTED_HEADER
    except OSError:
        return False


def save_key(path: Path, signer, password: bytes | None = None) -> None:
    """Write ``signer``'s private key as PKCS#8 PEM to a new file ``path`` (0600), encrypted
    with ``password`` if given."""
    from cryptography.hazmat.primitives import serialization

    if password is None:
        data = signer.private_bytes
    else:
        key = serialization.load_pem_private_key(signer.private_bytes, password=None)
        data = encrypt_pkcs8(key, password)
        back = serialization.load_pem_private_key(data, password=password)
        if back.public_key() != key.public_key():  # never write a key that does not load
            raise OtaError("the encrypted key does not load back", "report this as a bug")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def encrypt_pkcs8(key, password: bytes, iterations: int = PBKDF2_ITERATIONS) -> bytes:
    """``key`` as an encrypted PKCS#8 PEM: PBES2, PBKDF2-HMAC-SHA256 with ``iterations``
    and AES-256-CBC, what ``openssl pkcs8 -topk8 -v2 aes-256-cbc -iter N`` writes.

    cryptography's ``BestAvailableEncryption`` uses 2,048 PBKDF2 iterations for PKCS#8,
    cheap to guess offline; the structure is written here with the iteration count OWASP
    recommends, and any PKCS#8 reader (cryptography, OpenSSL) loads it.
    """
    import base64

    from cryptography.hazmat.primitives import hashes, padding, serialization
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    plain = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt, iv = os.urandom(16), os.urandom(16)
    secret = PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive(password)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    algorithm = _seq(
        _oid("1.2.840.113549.1.5.13"),  # PBES2
        _seq(
            _seq(
                _oid("1.2.840.113549.1.5.12"),  # PBKDF2
                _seq(_der(0x04, salt), _int(iterations), _seq(_oid("1.2.840.113549.2.9"), NULL)),
            ),
            _seq(_oid("2.16.840.1.101.3.4.1.42"), _der(0x04, iv)),  # aes256-CBC
        ),
    )
    body = base64.encodebytes(_seq(algorithm, _der(0x04, sealed))).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"\n".join([_ENCRYPTED_HEADER, *lines, b"-----END ENCRYPTED PRIVATE KEY-----", b""])


# minimal DER, enough for the PBES2 structure above
NULL = b"\x05\x00"


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else _long_length(n)
    return bytes([tag]) + length + body


def _long_length(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def _int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(x) for x in dotted.split("."))
    body = bytes([40 * first + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, body)


def load_file_signer(path: Path, passwords: Passwords, what: str = "", public_key=None):
    """A ``CryptoSigner`` for the PEM file ``path`` (decrypted when it is encrypted).

    ``public_key`` (the one the metadata lists) is checked against the file's key; without
    it the public key is derived from the private one (to find which key a file holds).

    Raises:
        OtaError: missing or unreadable file, no or a wrong password, not this key.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.exceptions import KeyMismatchError
    from securesystemslib.signer import CryptoSigner, SSlibKey

    label = f"{what or 'private key'} {path}"
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise OtaError(
            f"the {label} is missing",
            "restore it from your backup, or give its location (--root-key PATH for a root key)",
        ) from exc
    except OSError as exc:
        raise OtaError(f"cannot read the {label}: {exc.strerror}", "check its permissions") from exc
    if data.startswith(_ENCRYPTED_HEADER):
        key = _decrypt(data, label, passwords)
    else:
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise OtaError(
                f"the {label} is not a PEM private key ({exc})",
                "restore the key file from your backup",
            ) from exc
    if public_key is None:
        public_key = SSlibKey.from_crypto(key.public_key())
    try:
        return CryptoSigner(key, public_key)
    except (KeyMismatchError, ValueError) as exc:
        raise OtaError(
            f"the {label} is not the key the repository's root lists for it",
            "give the right key file (keys were perhaps rotated since this copy)",
        ) from exc


def _decrypt(data: bytes, label: str, passwords: Passwords):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    for password in passwords.candidates(label):
        try:
            key = load_pem_private_key(data, password=password)
        except (ValueError, TypeError):
            continue
        if password not in passwords.good:
            passwords.good.append(password)
        return key
    source = (
        PASSWORD_ENV
        if not isinstance(passwords.given, str) and os.environ.get(PASSWORD_ENV)
        else "the password given"
    )
    raise OtaError(
        f"cannot decrypt the {label}: wrong password ({source})",
        f"give the password the key was encrypted with ({PASSWORD_ENV} or the prompt)",
    )


class EncryptedFileSigner:
    """securesystemslib signer scheme ``encfile:PATH``: a password-encrypted PKCS#8 PEM.

    ``Signer.from_priv_key_uri("encfile:/path/key.pem", public_key, secrets_handler)`` asks
    ``secrets_handler("password")`` (or reads ``TFEDGE_KEY_PASSWORD``) and returns a
    ``CryptoSigner``. Registered with securesystemslib by :func:`register`.
    """

    SCHEME = ENCRYPTED_SCHEME

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key, secrets_handler=None):
        scheme, _, path = priv_key_uri.partition(":")
        if scheme != cls.SCHEME:
            raise ValueError(f"EncryptedFileSigner does not support {priv_key_uri}")
        return load_file_signer(Path(path), Passwords(secrets_handler), public_key=public_key)


def register() -> None:
    """Make ``encfile:`` a securesystemslib signer scheme (idempotent)."""
    from securesystemslib.signer import SIGNER_FOR_URI_SCHEME

    SIGNER_FOR_URI_SCHEME.setdefault(ENCRYPTED_SCHEME, EncryptedFileSigner)


# ---------------------------------------------------------------- signers.json
def read_signers(keys_dir: Path, root_signed) -> dict[str, list[dict]]:
    """Where each role's keys are: ``REPO/keys/signers.json``, or (repositories made before
    it existed) ``REPO/keys/<role>.pem`` for each role's first key."""
    try:
        found = json.loads((keys_dir / SIGNERS_FILE).read_text())
    except FileNotFoundError:
        found = {}
    except (OSError, ValueError) as exc:
        raise OtaError(
            f"cannot read {keys_dir / SIGNERS_FILE}: {exc}",
            "fix the file (JSON: {role: [{keyid, uri}]}) or restore it from your backup",
        ) from exc
    out = {}
    for role, spec in root_signed.roles.items():
        entries = found.get(role)
        if entries is None:
            entries = [{"keyid": spec.keyids[0], "uri": f"file2:{role}.pem"}]
        out[role] = entries
    return out


def write_signers(keys_dir: Path, signers: dict[str, list[dict]]) -> None:
    from tfedge.fsutil import write_bytes_atomic

    text = json.dumps(signers, indent=1, sort_keys=True) + "\n"
    write_bytes_atomic(keys_dir / SIGNERS_FILE, text.encode(), mode=0o600)


def file_uri(path: Path, keys_dir: Path, encrypted: bool) -> str:
    """The URI recorded for a key file: relative to ``keys_dir`` when inside it."""
    path = Path(os.path.abspath(path))
    try:
        shown = path.relative_to(Path(os.path.abspath(keys_dir))).as_posix()
    except ValueError:
        shown = str(path)
    return f"{ENCRYPTED_SCHEME if encrypted else 'file2'}:{shown}"


def uri_path(uri: str, keys_dir: Path) -> Path | None:
    """The file of a ``file2:``/``encfile:`` URI (relative ones under ``keys_dir``); None for
    other schemes."""
    scheme, _, rest = uri.partition(":")
    if scheme not in FILE_SCHEMES:
        return None
    return keys_dir / rest if not os.path.isabs(rest) else Path(rest)


def load_signer(entry: dict, public_key, keys_dir: Path, passwords: Passwords, what: str) -> Any:
    """The signer of one ``signers.json`` entry, through securesystemslib's interface."""
    from securesystemslib.signer import Signer

    path = uri_path(entry["uri"], keys_dir)
    if path is not None:
        return load_file_signer(path, passwords, what, public_key)
    register()
    try:
        return Signer.from_priv_key_uri(entry["uri"], public_key, _handler(passwords, what))
    except Exception as exc:  # any signer backend (KMS, HSM) with its own errors
        raise OtaError(
            f"cannot load the {what} ({entry['uri']}): {type(exc).__name__}: {exc}",
            "check that the signer's service is reachable and its extras are installed",
        ) from exc


def _handler(passwords: Passwords, what: str):
    def ask(secret: str) -> str:
        return next(iter(passwords.candidates(f"{what} ({secret})"))).decode()

    return ask


__all__ = [
    "ENCRYPTED_SCHEME",
    "EncryptedFileSigner",
    "PASSWORD_ENV",
    "Passwords",
    "file_uri",
    "is_encrypted",
    "load_file_signer",
    "load_signer",
    "read_signers",
    "register",
    "save_key",
    "uri_path",
    "write_signers",
]
