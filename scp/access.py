"""Who may associate: the calling-AE allow-list with optional addresses per AE."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kneenode.settings import PeerSettings, ScpSettings
from scp.status import RejectReason


@dataclass(frozen=True)
class AccessDecision:
    """The outcome of an association request check."""

    allowed: bool
    reason: str
    diagnostic: RejectReason = RejectReason.NO_REASON
    peer: PeerSettings | None = None


def check_association(
    settings: ScpSettings, *, calling_ae: str, called_ae: str, address: str
) -> AccessDecision:
    """Decide whether an association request is allowed (pure; no I/O).

    Rules: a wrong called AE title is rejected when ``require_called_ae`` is set; with
    ``allow_any`` every peer is accepted; otherwise the calling AE must be listed in ``peers``
    and, when that peer lists ``hosts``, the address must fall in one of them.
    """
    calling, called = calling_ae.strip(), called_ae.strip()
    if settings.require_called_ae and called != settings.ae_title:
        return AccessDecision(False, f"called AE '{called}' is not '{settings.ae_title}'",
                              RejectReason.CALLED_AE_NOT_RECOGNISED)
    peer = next((p for p in settings.peers if p.ae_title == calling), None)
    if settings.allow_any:
        return AccessDecision(True, "allow_any", peer=peer)
    if peer is None and settings.allow_loopback and _is_loopback(address):
        return AccessDecision(True, "allow_loopback")
    if peer is None:
        return AccessDecision(False, f"calling AE '{calling}' is not in the allow-list",
                              RejectReason.CALLING_AE_NOT_RECOGNISED)
    if peer.hosts and not _address_in(address, peer.hosts):
        return AccessDecision(False, f"calling AE '{calling}' is not allowed from {address}",
                              RejectReason.CALLING_AE_NOT_RECOGNISED)
    return AccessDecision(True, "allow-list", peer=peer)


def _address_in(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
