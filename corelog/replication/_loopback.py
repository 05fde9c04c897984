"""Loopback-only ICE for WebRTC (``connect_webrtc(loopback_only=True)``, the default).

* ``RTCConfiguration(iceServers=[])``: no STUN or TURN server is ever contacted,
  so there are no server-reflexive or relay candidates;
* aioice enumerates host addresses with ``aioice.ice.get_host_addresses`` (and
  has no option to choose them); :func:`install_host_address_filter` wraps it
  once so that, while the context variable :data:`gather_loopback_only` is set (inside
  a ``connect_webrtc(loopback_only=True)`` call only), it returns exactly
  ``["127.0.0.1"]``. Elsewhere it behaves as before;
* the peer's SDP is checked *before* it is applied (:func:`check_loopback`):
  every ``a=candidate`` must be ``127.0.0.1 ... typ host``, anything else
  (another address, an mDNS ``.local`` name, srflx/relay) is refused with
  :class:`WebRTCError`, so aioice never sends a packet (nor an mDNS query)
  anywhere else. Our own SDP is checked the same way. aioice does not obfuscate
  local candidates with mDNS names.
"""

from __future__ import annotations

import contextvars
import re
import threading

from .errors import WebRTCError

LOOPBACK = "127.0.0.1"

gather_loopback_only: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "corelog_loopback_only", default=False
)
_filter_lock = threading.Lock()


def install_host_address_filter() -> None:
    """Wrap ``aioice.ice.get_host_addresses`` once: exactly 127.0.0.1 while ``gather_loopback_only`` is set."""
    import aioice.ice

    with _filter_lock:
        original = aioice.ice.get_host_addresses
        if getattr(original, "_corelog_loopback_filter", False):
            return

        def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            if gather_loopback_only.get():
                return [LOOPBACK] if use_ipv4 else []
            return original(use_ipv4, use_ipv6)

        get_host_addresses._corelog_loopback_filter = True  # type: ignore[attr-defined]
        get_host_addresses.__wrapped__ = original  # type: ignore[attr-defined]
        aioice.ice.get_host_addresses = get_host_addresses


_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ (\S+)", re.M)


def sdp_candidates(sdp: str) -> list[tuple[str, str, str]]:
    """``(transport, address, type)`` of every ``a=candidate`` line in an SDP."""
    return [(m.group(3).lower(), m.group(5), m.group(7)) for m in _CANDIDATE.finditer(sdp)]


def candidate_addresses(sdp: str) -> list[str]:
    """The connection addresses of every ``a=candidate`` line in an SDP."""
    return [address for _, address, _ in sdp_candidates(sdp)]


def check_loopback(sdp: str, whose: str) -> None:
    """Refuse (WebRTCError) an SDP whose ICE candidates are not all ``udp 127.0.0.1 typ host``."""
    candidates = sdp_candidates(sdp)
    if not candidates:
        raise WebRTCError(f"{whose} SDP has no ICE candidate (loopback_only=True expects 127.0.0.1)")
    lines = len(re.findall(r"^a=candidate:", sdp, re.M))
    if lines != len(candidates):
        raise WebRTCError(f"{whose} SDP has an a=candidate line that cannot be parsed; refusing")
    for transport, address, kind in candidates:
        if (transport, address, kind) != ("udp", LOOPBACK, "host"):
            raise WebRTCError(
                f"{whose} SDP offers the ICE candidate {transport} {address} typ {kind}; with "
                f"loopback_only=True only udp {LOOPBACK} typ host is accepted"
            )
