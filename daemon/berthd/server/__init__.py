"""The server: the socket, lines, dispatch, the command registry and parameters, the lock, peer
credentials, readiness notification. It knows sockets and JSON lines, not apps."""
