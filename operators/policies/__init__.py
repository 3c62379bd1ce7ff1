"""Sampling policies: one per file, each a ``Policy`` (see ``base``), built from config by name."""
