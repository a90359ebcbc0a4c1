"""The torch side: models, objectives, the run dir, the loop (`train`), `predict` and `embed`.

Everything that imports torch lives under this folder, so "torch is never on the index or
build-cache path" is a rule about paths that `tests/test_architecture.py` checks.
"""
