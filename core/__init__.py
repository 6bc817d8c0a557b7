"""TuneDeck's pure logic: no Qt, no paramiko, no torch.

Some modules here (records, evalsets, passk, fsutil, evalstate, evalmemory; config with pydantic) use only the standard library and are shipped with every run
bundle, so the cluster-side job can import them; keep this file free of imports.
"""
