"""Supervision: what should run and keeping it running (the manager, the state machine), one-shot
jobs, and process logs."""
