"""TuneDeck's version, in one place (read by the CLI, the About box and run records)."""

__version__ = "0.1.0"
