"""Patient pseudonyms: a keyed hash of Patient ID + Issuer, and the node secret that keys it.

The history never stores a name or a Patient ID. Exams of one patient are linked by
``HMAC-SHA256(secret, issuer + US + patient_id)``: the same ID from another issuer (another
hospital's numbering) is another patient, and without the secret nobody can test a guessed ID
against a pseudonym. Patient names play no part, so two patients with one name never mix.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from kneenode.errors import ErrorCode, NodeError

SECRET_BYTES = 32
#: Separates issuer and ID in the hashed message (ASCII unit separator: in neither value).
_SEP = "\x1f"


def pseudonym(secret: bytes, patient_id: str, issuer: str) -> str:
    """The pseudonym (64 hex digits) of ``patient_id`` issued by ``issuer`` under ``secret``.

    Both values are stripped of DICOM padding (spaces, NUL) first, so the same header read by two
    libraries gives the same pseudonym.

    Raises
    ------
    ValueError
        For an empty Patient ID (every anonymous exam would otherwise be one "patient").
    """
    pid = patient_id.strip(" \x00")
    if not pid:
        raise ValueError("an empty Patient ID has no pseudonym")
    if len(secret) < 16:
        raise ValueError("the pseudonym secret needs at least 16 bytes")
    message = f"{issuer.strip(' ' + chr(0))}{_SEP}{pid}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def load_secret(path: Path) -> bytes:
    """The node secret in ``path``, generated (32 random bytes, mode 0600) on first use.

    Creation is exclusive (``O_EXCL``), so two processes starting at once agree on one secret.

    Raises
    ------
    NodeError
        CONFIG_ERROR when the file exists but is unreadable, empty or too short.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it meanwhile: read theirs
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(SECRET_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NodeError(ErrorCode.CONFIG_ERROR, f"history secret {path} unreadable: {exc}",
                        hint="fix history.secret_file or its permissions") from None
    if len(data) < 16:
        raise NodeError(ErrorCode.CONFIG_ERROR, f"history secret {path} holds {len(data)} bytes "
                        "(needs at least 16)", hint="restore the node's secret file from backup; "
                        "a new secret starts new pseudonyms (docs/history.md)")
    return data
