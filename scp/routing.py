"""Routing rules: which route a sender's association or a complete series belongs to.

Pure functions over ``[[routes]]`` (no I/O). A route matches when every criterion it names holds;
routes are tried in order and the first match wins, else ``[default_route]``. At association time
only the calling/called AE titles and the address are known, so series criteria are left out there
(access control, the completion quiet period); the job creator matches the whole series.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kneenode.settings import RouteSettings, RouteTarget, Settings

DEFAULT_ROUTE = "default"


@dataclass(frozen=True)
class Origin:
    """Who sent a series: calling AE, called AE (one of this node's virtual AEs) and address."""

    calling_ae: str
    called_ae: str
    address: str

    @classmethod
    def of(cls, summary: Mapping[str, Any]) -> Origin:
        """The origin recorded in a series summary (``summary.json``)."""
        return cls(str(summary.get("calling_ae") or ""), str(summary.get("called_ae") or ""),
                   str(summary.get("address") or ""))


@dataclass(frozen=True)
class RouteMatch:
    """The route a series got and why (every criterion that held, or ``no route matched``)."""

    name: str
    target: RouteTarget
    reason: str


def in_networks(address: str, networks: Sequence[str]) -> bool:
    """Whether ``address`` lies in one of the IP addresses / CIDR networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def _origin_reasons(route: RouteSettings, origin: Origin) -> list[str] | None:
    """The criteria on the association that held (None when one fails).

    An empty ``origin.called_ae`` means not known (the completion tracker knows only the calling
    AE and address): the route's ``called_ae`` is then not checked.
    """
    held = []
    if route.calling_ae:
        if origin.calling_ae not in route.calling_ae:
            return None
        held.append(f"calling_ae={origin.calling_ae}")
    if route.called_ae and origin.called_ae:
        if origin.called_ae not in route.called_ae:
            return None
        held.append(f"called_ae={origin.called_ae}")
    if route.hosts:
        if not in_networks(origin.address, route.hosts):
            return None
        held.append(f"address {origin.address} in {','.join(route.hosts)}")
    return held


def _series_reasons(route: RouteSettings, summary: Mapping[str, Any]) -> list[str] | None:
    held = []
    if route.modality:
        modality = str(summary.get("modality") or "").upper()
        if modality not in [m.upper() for m in route.modality]:
            return None
        held.append(f"modality={modality}")
    if route.body_part is not None:
        part = str(summary.get("body_part_examined") or "")
        if not re.search(route.body_part, part, re.IGNORECASE):
            return None
        held.append(f"body_part {part!r} ~ /{route.body_part}/")
    if route.description is not None:
        texts = [str(summary.get(k) or "") for k in ("series_description", "protocol_name")]
        hit = next((t for t in texts if re.search(route.description, t, re.IGNORECASE)), None)
        if hit is None:
            return None
        held.append(f"description {hit!r} ~ /{route.description}/")
    return held


def match_series(settings: Settings, summary: Mapping[str, Any]) -> RouteMatch:
    """The first route matching the series' origin and attributes, else the default route."""
    origin = Origin.of(summary)
    for route in settings.routes:
        held = _origin_reasons(route, origin)
        if held is None:
            continue
        more = _series_reasons(route, summary)
        if more is None:
            continue
        return RouteMatch(route.name, route, ", ".join([*held, *more]) or "matches every series")
    return RouteMatch(DEFAULT_ROUTE, settings.default_route, "no route matched")


def origin_routes(settings: Settings, origin: Origin) -> list[RouteSettings]:
    """Routes whose association criteria hold for ``origin`` (series criteria not looked at)."""
    return [r for r in settings.routes if _origin_reasons(r, origin) is not None]


def answered_aes(settings: Settings) -> set[str]:
    """Every called AE title this node answers to: its own and each route's virtual AEs."""
    return {settings.scp.ae_title, *(ae for r in settings.routes for ae in r.called_ae)}


def quiet_seconds_for(settings: Settings, origin: Origin) -> float:
    """The completion quiet period: the first route matching the origin that sets one.

    Series attributes are unknown before completion, so a route that also names modality or
    descriptions lends its quiet period to every series of its senders.
    """
    for route in origin_routes(settings, origin):
        if route.quiet_seconds is not None:
            return route.quiet_seconds
    if settings.default_route.quiet_seconds is not None:
        return settings.default_route.quiet_seconds
    return settings.completion.quiet_seconds


def completion_policy_for(settings: Settings, origin: Origin) -> str:
    """The completion policy (``auto`` / ``timer``): the first route matching the origin that
    sets one, else ``[default_route]``'s, else ``completion.policy``."""
    for route in origin_routes(settings, origin):
        if route.completion_policy is not None:
            return route.completion_policy
    return settings.default_route.completion_policy or settings.completion.policy
