"""Local TCP ports: one the OS says is free, and whether something listens on one (for the
servers Keel and its tests start themselves); which names a server Keel runs answers to."""

from __future__ import annotations

import ipaddress
import socket

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A port nothing listens on right now (the OS picks it; another process may take it
    before the caller binds it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def split_host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) → (host, port); ValueError when it is not one."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("give HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port)


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_headers(host: str, port: int) -> list[str]:
    """The Host header values a request to a server bound to HOST:PORT may carry: its own
    address, and the loopback names when it is bound to one of them. Anything else is a
    request for another name that resolved here (DNS rebinding)."""
    names = {f"[{host}]" if ":" in host else host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= set(LOOPBACK_NAMES)
    return sorted(f"{name}:{port}" for name in names)
