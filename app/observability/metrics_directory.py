"""Where every process of a server writes its metric values: called first, before anything
imports prometheus_client, which picks its storage at import (a process that imported it first
would keep its values in memory, invisible to scrapes). Standard library only, for that reason."""

import os
import tempfile


def use_metrics_directory(prefix: str) -> str:
    """PROMETHEUS_MULTIPROC_DIR, made a new temporary directory unless it is set; created if missing."""
    directory = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix=prefix))
    os.makedirs(directory, exist_ok=True)
    return directory
