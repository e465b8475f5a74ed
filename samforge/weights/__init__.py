"""The official weights by name: a table of released files, and a verified, resumable, offline-aware download
cache. It sits below ``models/`` (which resolves every checkpoint argument through :func:`resolve_checkpoint`) and
imports nothing of samforge above it."""

from samforge.weights.download import DownloadError, Expected, cache_dir, fetch, is_offline, weights_dir
from samforge.weights.hub import MissingDependency, hub_download
from samforge.weights.resolve import fetch_official, fetch_url, is_cached, official_path, resolve_checkpoint
from samforge.weights.table import HF_IDS, UNKNOWN, WEIGHTS, OfficialWeights, model_type_of, official

__all__ = [
    "HF_IDS", "UNKNOWN", "WEIGHTS", "DownloadError", "Expected", "MissingDependency", "OfficialWeights", "cache_dir",
    "fetch", "fetch_official", "fetch_url", "hub_download", "is_cached", "is_offline", "model_type_of", "official",
    "official_path", "resolve_checkpoint", "weights_dir",
]
