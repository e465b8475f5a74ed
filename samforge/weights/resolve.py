"""One function every checkpoint argument goes through: a local path passes as it is; an official name
(``sam_vit_b``), an ``http(s)://`` URL (optionally ending ``#sha256=HEX``) or a Hugging Face id
(``facebook/sam2.1-hiera-tiny``) becomes a verified file in samforge's cache, downloaded on first use."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from samforge.weights.download import Expected, fetch, is_verified, mirrored, weights_dir
from samforge.weights.hub import hub_download
from samforge.weights.table import HF_IDS, SHA256_HEX, WEIGHTS, OfficialWeights, official

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")
SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


def resolve_checkpoint(checkpoint: str | os.PathLike, *, progress: bool = True,
                       what: str = "checkpoint file") -> Path:
    """The local file ``checkpoint`` names (see the module docstring); a local path that exists wins over a name.
    A ``Path`` (any ``os.PathLike``) is always a local path and is returned as it is, existing or not. ``what``
    names the argument in the not-found message (``"--checkpoint"``: "--checkpoint not found: ...")."""
    if isinstance(checkpoint, os.PathLike):
        return Path(checkpoint)
    if not isinstance(checkpoint, str):
        raise TypeError(f"checkpoint must be a path, an official name, a URL or a Hugging Face id (str or Path), "
                        f"got {type(checkpoint).__name__}")
    if checkpoint.strip() == "":
        raise ValueError("checkpoint must not be empty: give a path, an official name (see samforge weights list), "
                         "an http(s) URL or a Hugging Face id")
    if Path(checkpoint).exists():
        return Path(checkpoint)
    if checkpoint.startswith(("http://", "https://")):
        return fetch_url(checkpoint, progress=progress)
    if checkpoint in WEIGHTS:
        return fetch_official(checkpoint, progress=progress)
    if checkpoint in HF_IDS:
        return hub_download(WEIGHTS[HF_IDS[checkpoint]])
    raise FileNotFoundError(not_found_message(checkpoint, what))


def official_path(name: str) -> Path:
    """Where the cache keeps the file of an official name (whether or not it is there yet)."""
    return weights_dir() / _entry(name).filename


def is_cached(name: str) -> bool:
    """True when the official file of ``name`` is in the cache and verified (no network access)."""
    return is_verified(official_path(name), _entry(name).expected())


def fetch_official(name: str, *, progress: bool = True) -> Path:
    """The verified cached file of an official name, downloaded first if needed (from the mirror when set)."""
    entry = _entry(name)
    return fetch(mirrored(entry.urls, entry.filename), official_path(name), entry.expected(),
                 what=f"{entry.name} ({entry.filename})", progress=progress)


def fetch_url(url: str, *, progress: bool = True) -> Path:
    """The cached file of an http(s) URL, downloaded first if needed; ``#sha256=HEX`` at the end is checked."""
    if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
        raise ValueError(f"expected an http(s):// URL, got {url!r}")
    parsed = urlparse(url)
    sha256 = None
    if parsed.fragment:
        key, _, value = parsed.fragment.partition("=")
        if key != "sha256" or not SHA256_HEX.match(value.lower()):
            raise ValueError(f"a checkpoint URL may end with #sha256=<64 hex digits>, got #{parsed.fragment} in {url}")
        sha256 = value.lower()
    else:
        print(f"samforge: no hash given for {url}: its download is not verified (add #sha256=<hex> to check it)",
              file=sys.stderr)
    plain = parsed._replace(fragment="").geturl()
    name = SAFE_NAME.sub("_", unquote(Path(parsed.path).name)) or "download"
    key = hashlib.sha256(plain.encode()).hexdigest()[:16]
    return fetch((plain,), weights_dir() / "url" / key / name, Expected(sha256=sha256), what=name, progress=progress)


def known_names() -> list[str]:
    """The official names and Hugging Face ids ``resolve_checkpoint`` knows."""
    return [*WEIGHTS, *HF_IDS]


def not_found_message(text: str, what: str = "checkpoint file") -> str:
    """Why ``text`` names no checkpoint: a missing file, and for something that looks like a name, the known
    names and the nearest one."""
    looks_like_name = "\\" not in text and text.count("/") <= 1 and not text.endswith(CHECKPOINT_SUFFIXES)
    hint = names_hint(text)
    if looks_like_name or "Did you mean" in hint:
        return f"{what} not found: {text}; nor is it an official name or Hugging Face id: {hint}"
    return f"{what} not found: {text}"


def names_hint(text: str) -> str:
    """What ``resolve_checkpoint`` takes besides files, and the known name nearest to ``text``."""
    hint = f"expected a local file, an http(s):// URL, or one of {', '.join(known_names())}"
    near = difflib.get_close_matches(text, known_names(), n=1, cutoff=0.6)
    return hint + (f". Did you mean {near[0]!r}?" if near else "")


def _entry(name: str) -> OfficialWeights:
    entry = official(name)
    if entry is None:
        raise ValueError(f"unknown weights name {name!r}: {names_hint(name)}")
    return entry
