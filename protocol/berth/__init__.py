"""berthd's wire format and its clients: message types, line framing, the Python clients and `berth`."""

from berth.client import Client, CommandFailed
from berth.messages import Response

__all__ = ["Client", "CommandFailed", "Response"]
