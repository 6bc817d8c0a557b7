"""TuneDeck's desktop app and command line. Nothing imports app."""
