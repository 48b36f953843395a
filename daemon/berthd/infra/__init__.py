"""Infrastructures (OCCO's): descriptions and node definitions read, checked and ordered in levels."""
