"""Code that runs on the cluster: train, evaluate, sandbox, demo data.

Shipped as files with each run: imports only the standard library, the training stack, itself and the
standard-library-only core modules (records, evalsets, passk, fsutil, evalstate).
"""
