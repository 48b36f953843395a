"""berthd: a deploy daemon behind one UNIX socket."""

__version__ = "0.1.0"
