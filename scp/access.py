"""Who may associate: the peers the routes name (calling AE, addresses, called AE)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kneenode.settings import RouteSettings, Settings
from scp.routing import Origin, answered_aes, origin_routes
from scp.status import RejectReason


@dataclass(frozen=True)
class AccessDecision:
    """The outcome of an association request check."""

    allowed: bool
    reason: str
    diagnostic: RejectReason = RejectReason.NO_REASON
    route: RouteSettings | None = None


def check_association(
    settings: Settings, *, calling_ae: str, called_ae: str, address: str
) -> AccessDecision:
    """Decide whether an association request is allowed (pure; no I/O).

    Rules: with ``require_called_ae`` a called AE title that is neither ``scp.ae_title`` nor a
    route's ``called_ae`` is rejected; with ``allow_any`` every peer is accepted; otherwise a
    route that names peers (``calling_ae`` or ``hosts``) must match the calling AE, called AE and
    address. A calling AE that some route names is held to its routes even from this machine;
    any other AE from loopback is accepted with ``allow_loopback``.
    """
    scp = settings.scp
    origin = Origin(calling_ae.strip(), called_ae.strip(), address)
    if scp.require_called_ae and origin.called_ae not in answered_aes(settings):
        return AccessDecision(False, f"called AE '{origin.called_ae}' is not one this node "
                              f"answers to ({', '.join(sorted(answered_aes(settings)))})",
                              RejectReason.CALLED_AE_NOT_RECOGNISED)
    hits = [r for r in origin_routes(settings, origin) if r.names_peer]
    if scp.allow_any:
        return AccessDecision(True, "allow_any", route=hits[0] if hits else None)
    if hits:
        return AccessDecision(True, f"route {hits[0].name}", route=hits[0])
    if any(origin.calling_ae in r.calling_ae for r in settings.routes):
        return AccessDecision(False, f"calling AE '{origin.calling_ae}' is not allowed from "
                              f"{address} with called AE '{origin.called_ae}'",
                              RejectReason.CALLING_AE_NOT_RECOGNISED)
    if scp.allow_loopback and _is_loopback(address):
        return AccessDecision(True, "allow_loopback")
    return AccessDecision(False, f"calling AE '{origin.calling_ae}' is not in the allow-list",
                          RejectReason.CALLING_AE_NOT_RECOGNISED)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
