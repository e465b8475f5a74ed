"""Official weights by Hugging Face id (``facebook/sam2.1-hiera-tiny``), fetched through ``huggingface_hub`` into
its own cache (``HF_HOME``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` apply) and checked against samforge's table."""

from __future__ import annotations

from pathlib import Path

from samforge.weights.download import DownloadError, is_offline, is_verified, weights_dir
from samforge.weights.table import OfficialWeights


class MissingDependency(ImportError, ValueError):
    """An optional package a requested feature needs is not installed (the message says what to install)."""


def hub_download(entry: OfficialWeights) -> Path:
    """The verified local file of ``entry``'s Hugging Face repository (``entry.hf_repo``)."""
    if not isinstance(entry, OfficialWeights) or not entry.hf_repo:
        raise ValueError(f"hub_download expects a table entry with a Hugging Face repository, got {entry!r}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise MissingDependency(
            f"{entry.hf_repo!r} is a Hugging Face id, and fetching it needs the huggingface_hub package: "
            f"pip install huggingface_hub (or pass the official name {entry.name!r}, which samforge downloads "
            "itself)") from None
    offline = is_offline()
    try:
        path = Path(hf_hub_download(repo_id=entry.hf_repo, filename=entry.filename, local_files_only=offline))
    except Exception as e:  # huggingface_hub's own errors: not found locally, HTTP, connection
        if offline:
            raise FileNotFoundError(
                f"{entry.filename} of {entry.hf_repo} is not in the Hugging Face cache and offline mode forbids "
                f"downloading it: fetch https://huggingface.co/{entry.hf_repo}/resolve/main/{entry.filename} by hand, "
                f"or use the official name {entry.name!r} with the file put at "
                f"{weights_dir() / entry.filename} ({type(e).__name__}: {e})") from None
        raise DownloadError(f"could not fetch {entry.filename} from the Hugging Face repository {entry.hf_repo}: "
                            f"{type(e).__name__}: {e}") from None
    is_verified(path, entry.expected(), stamp=weights_dir() / "hub" / f".{entry.filename}.verified.json")
    return path
