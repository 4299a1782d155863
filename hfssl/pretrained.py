"""Check a ``--model_name_or_path`` / ``--tokenizer_name`` (or ``--dataset_name``) before the libraries try it.

transformers treats any name that is not a local directory as a Hub id: a mistyped local path then waits
through ~50 s of Hub retries on a machine without network and ends with "couldn't connect to
huggingface.co", never saying that the directory is missing. :func:`check_pretrained_source` answers in
one line instead: the directory does not exist, the name is a file, or the Hub id is neither cached nor
reachable (offline mode or no network). Names that may load (a directory, a cached Hub id, a Hub id
while the Hub answers) pass through unchanged.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from hfssl.errors import ConfigError

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def looks_like_path(name: str) -> bool:
    """A name that can only be a local path (``./tok``, ``/data/tok``, ``~/tok``, ``a/b/c``, ``tok/``),
    not a Hub id (``gpt2``, ``user/model``)."""
    if name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or "\\" in name or name.count("/") > 1:
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def check_pretrained_source(name: str, flag: str) -> str:
    """``name`` if it may load (a directory, a cached or reachable Hub id); else ConfigError in one line."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ConfigError(f"{flag} {name} is a file; give the directory that holds the saved files "
                          "(save_pretrained's output), or a Hub id")
    if looks_like_path(name):
        raise ConfigError(f"{flag} {name}: the local directory does not exist ({os.path.abspath(path)})")
    if _in_hub_cache(name):
        return name
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"{flag} {name}: no such local directory, and {name!r} is not in the Hugging Face cache "
                          f"({constants.HF_HUB_CACHE}); HF_HUB_OFFLINE is set, so the Hub is not asked")
    if not any(os.environ.get(v) for v in _PROXY_VARIABLES) and not _reachable(constants.ENDPOINT):
        raise ConfigError(f"{flag} {name}: no such local directory, {name!r} is not in the Hugging Face cache, and "
                          f"the Hub ({constants.ENDPOINT}) cannot be reached (no network); set HF_HUB_OFFLINE=1 to "
                          "work from the cache")
    return name


def check_dataset_source(name: str, flag: str = "--dataset_name") -> None:
    """ConfigError in one line when ``name`` is a missing local path, a file, or a Hub id while the Hub
    cannot be reached; ``datasets`` itself would retry for ~25 s first. In offline mode ``datasets`` looks in
    its cache and says so quickly."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise ConfigError(f"{flag} {name} is a file: pass data files with --train_file (--dataset_name takes a Hub "
                          "dataset id or a dataset folder)")
    if looks_like_path(name):
        raise ConfigError(f"{flag} {name}: the local directory does not exist ({os.path.abspath(path)})")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return
    if not any(os.environ.get(v) for v in _PROXY_VARIABLES) and not _reachable(constants.ENDPOINT):
        raise ConfigError(f"{flag} {name}: no such local directory, and the Hub ({constants.ENDPOINT}) cannot be "
                          "reached (no network); set HF_DATASETS_OFFLINE=1 to use a copy in the datasets cache")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import constants

    folder = "models--" + repo_id.replace("/", "--")
    return os.path.isdir(os.path.join(constants.HF_HUB_CACHE, folder, "snapshots"))


@functools.lru_cache(maxsize=4)
def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens (one try; transformers would retry for ~50 s)."""
    url = urlparse(endpoint)
    if not url.hostname:
        return True  # an endpoint we cannot parse: let huggingface_hub try it
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
