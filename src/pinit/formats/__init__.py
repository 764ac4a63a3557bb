"""Readers (and later writers) of the checkpoint formats pinit understands."""
