"""np-mode tests: run with ``NEEDLE_BACKEND=np python -m pytest tests/np_mode``.

In any other mode the whole directory is skipped (not collected).
"""
import os

if os.environ.get("NEEDLE_BACKEND", "nd") != "np":
    collect_ignore_glob = ["test_*.py"]
