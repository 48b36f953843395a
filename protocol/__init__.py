"""berthd's wire format and its clients: message types, line framing, the Python clients and `berth`."""

from protocol.client import Client, CommandFailed
from protocol.messages import Response

__all__ = ["Client", "CommandFailed", "Response"]
