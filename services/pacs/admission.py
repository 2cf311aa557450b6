"""Who may open an association with the receiver, and the reason given when one is refused.

The allow-list holds calling AE titles, each optionally bound to hosts or networks, the way Orthanc's
DicomCheckModalityHost binds a modality's AE title to its Host: `ORTHANC@10.0.0.5`, `CR_ROOM1@10.1.2.0/24`,
`PACS@pacs.example.org` (resolved once, at start). A plain title is accepted from any address; a bound one only from
its addresses (the same title listed twice is accepted from either). AE titles are spoofed trivially, so binding
them to the sender's address is what makes the list mean something on a shared network.

The receiver decides in pynetdicom's EVT_REQUESTED handler, once the A-ASSOCIATE-RQ has arrived, so a connection
that never asks for an association takes no association slot (it is closed after the ACSE timeout), and every
refusal is logged with its real reason: unknown title, right title from the wrong address, wrong called title, or
the association limit.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from services.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)  # transient: the sender may try again shortly

_REJECT_REASONS = {
    CALLING_AE_NOT_RECOGNISED: "calling AE title not recognised",
    CALLED_AE_NOT_RECOGNISED: "called AE title not recognised",
    LOCAL_LIMIT_EXCEEDED: "local limit exceeded",
    (0x02, 0x03, 0x01): "temporary congestion",
    (0x02, 0x02, 0x01): "no reason given (ACSE)",
    (0x01, 0x02, 0x02): "protocol version not supported",
}


def reject_reason(result: int | None, source: int | None, diagnostic: int | None) -> str:
    """A-ASSOCIATE-RJ codes in words (what pynetdicom itself rejected, e.g. at its connection limit)."""
    return _REJECT_REASONS.get((result, source, diagnostic), f"result {result}, source {source}, reason {diagnostic}")


@dataclass(frozen=True)
class AllowedCaller:
    """One calling AE title and the networks it may call from (empty: any address)."""

    aet: str
    networks: tuple[Network, ...] = ()

    def admits(self, address: str) -> bool:
        if not self.networks:
            return True
        ip = _ip(address)
        return ip is not None and any(ip.version == net.version and ip in net for net in self.networks)

    def describe(self) -> str:
        return self.aet + ("@" + "|".join(str(n) for n in self.networks) if self.networks else "")


@dataclass(frozen=True)
class Refusal:
    """Why an association is refused: the A-ASSOCIATE-RJ codes and a PHI-free sentence for the log."""

    codes: tuple[int, int, int]
    reason: str


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)  # an IPv4 peer on a dual-stack socket: ::ffff:10.0.0.5
    return mapped or ip


def _aet(text: str) -> str:
    aet = text.strip()
    if not aet or len(aet) > 16 or "\\" in aet or any(ord(c) < 32 for c in aet):
        raise ConfigError(
            f"AE title {aet!r} is not valid (1 to 16 characters, no backslash or control characters)",
            "Fix CXR_DICOM_ALLOW_AETS or --allow-aet: TITLE, TITLE@ADDRESS or TITLE@NETWORK/BITS, comma-separated.",
        )
    return aet


def _networks(host: str) -> tuple[Network, ...]:
    """An address, a network (CIDR) or a host name (resolved now) as networks."""
    host = host.strip().strip("[]")
    try:
        return (ipaddress.ip_network(host, strict=False),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(
            f"the host {host!r} in the AE allow-list does not resolve ({exc})",
            "Use an IP address or a network (10.1.2.0/24) in CXR_DICOM_ALLOW_AETS, or fix the name.",
        ) from exc
    return tuple(dict.fromkeys(ipaddress.ip_network(info[4][0]) for info in infos))


def parse_allow_list(values: Sequence[str] | str | None) -> tuple[AllowedCaller, ...]:
    """Callers from repeated options and/or comma-separated settings (`TITLE`, `TITLE@HOST`, `TITLE@NET/BITS`),
    one per title, order kept. A title listed plain anywhere is accepted from any address."""
    items = [] if values is None else [values] if isinstance(values, str) else list(values)
    found: dict[str, list[Network] | None] = {}  # None: any address
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            title, at, host = part.partition("@")
            aet = _aet(title)
            if at and not host.strip():
                raise ConfigError(f"{part.strip()!r} names no host after '@'", "Write TITLE@ADDRESS or TITLE.")
            if not at:
                found[aet] = None
                continue
            nets = _networks(host)
            if aet in found and found[aet] is None:
                continue
            known = found.setdefault(aet, [])
            assert known is not None
            known.extend(n for n in nets if n not in known)
    return tuple(AllowedCaller(aet, tuple(nets or ())) for aet, nets in found.items())


def parse_aets(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """Allow-list entries from repeated options and/or comma-separated settings, validated, stripped and
    de-duplicated (`TITLE` or `TITLE@HOST`), order kept."""
    items = [] if values is None else [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            entry = part.strip()
            if entry:
                _aet(entry.partition("@")[0])
                if entry not in out:
                    out.append(entry)
    return tuple(out)


class Admission:
    """The receiver's decision on one association request."""

    def __init__(
        self, callers: Sequence[AllowedCaller], *, called_aet: str, any_caller: bool, max_associations: int
    ) -> None:
        self.callers = {c.aet: c for c in callers}
        self.called_aet, self.any_caller, self.max_associations = called_aet.strip(), any_caller, max_associations

    def refusal(self, *, calling: str, called: str, address: str, in_progress: int) -> Refusal | None:
        """None when the association may go ahead; `in_progress` counts the other associations already
        requested or established (not idle connections)."""
        calling, called = calling.strip(), called.strip()
        if called != self.called_aet:
            return Refusal(CALLED_AE_NOT_RECOGNISED, f"called AE title {called!r} is not ours ({self.called_aet})")
        caller = self.callers.get(calling)
        if caller is None and not self.any_caller:
            return Refusal(CALLING_AE_NOT_RECOGNISED, f"calling AE title {calling!r} is not on the allow-list")
        if caller is not None and not caller.admits(address):
            nets = ", ".join(str(n) for n in caller.networks)
            return Refusal(
                CALLING_AE_NOT_RECOGNISED,
                f"calling AE title {calling!r} is allowed only from {nets}, not from {address}",
            )
        if in_progress >= self.max_associations:
            return Refusal(
                LOCAL_LIMIT_EXCEEDED,
                f"{in_progress} associations already open, the limit (CXR_DICOM_MAX_ASSOCIATIONS)",
            )
        return None
