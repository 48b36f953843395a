"""Containers on a Docker engine of a deploy daemon: the engine client and the runner."""
