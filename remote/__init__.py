"""Talking to machines: SSH, backends, bundle upload, streaming, status, cancel. Never imports Qt.

Keep this file free of imports: remote/job/ is shipped to clusters with it.
"""
