"""The TuneDeck desktop app (PySide6). Widgets lay out, connect and render; logic lives in core/ and remote/."""
