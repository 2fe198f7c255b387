"""Loaded by every Python the client tests start (on PYTHONPATH): no connection, and no name
lookup, may leave this machine. A client that tries (an SDK calling a hard-coded AWS
endpoint) fails loudly instead of reaching the internet."""
import socket

_connect = socket.socket.connect
_getaddrinfo = socket.getaddrinfo
_LOCAL = {"localhost", "127.0.0.1", "::1"}


def _refuse(where):
    raise OSError(f"smlocal tests: {where} is not on this machine; clients may reach 127.0.0.1 only")


def _checked_getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and name not in _LOCAL and not str(name).startswith("127."):
        _refuse(f"looking up {name}")
    return _getaddrinfo(host, *args, **kwargs)


def _checked_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host not in _LOCAL and not str(host).startswith("127."):
            _refuse(f"connecting to {host}")
    return _connect(self, address)


socket.getaddrinfo = _checked_getaddrinfo
socket.socket.connect = _checked_connect
