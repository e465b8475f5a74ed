"""Fetching one file into samforge's cache, verified, resumable, one writer at a time.

The file is written to a hidden ``.NAME.part`` beside its place in the cache and renamed to ``NAME`` only after its
size and hash check, so nothing partial is ever where a later run would load it. An interrupted download resumes
with an HTTP ``Range`` request (the ``.part`` file is kept for that); a lock file (``NAME.lock``) makes two processes
fetching the same file end with one good copy. Environment:

- ``SAMFORGE_CACHE``: the cache folder (else ``$XDG_CACHE_HOME/samforge``, else ``~/.cache/samforge``);
- ``SAMFORGE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: never touch the network (a missing file is an error saying what
  to fetch by hand and where to put it);
- ``SAMFORGE_WEIGHTS_MIRROR=http://host/prefix/``: fetch official files from ``prefix/FILENAME`` instead of their
  official hosts (air-gapped sites, tests);
- ``SAMFORGE_DOWNLOAD_RETRIES`` (default 5): tries after a dropped connection or a server error, each resuming.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

ENV_CACHE, ENV_OFFLINE, ENV_HF_OFFLINE = "SAMFORGE_CACHE", "SAMFORGE_OFFLINE", "HF_HUB_OFFLINE"
ENV_MIRROR, ENV_RETRIES = "SAMFORGE_WEIGHTS_MIRROR", "SAMFORGE_DOWNLOAD_RETRIES"
DEFAULT_RETRIES = 5
RETRY_WAIT_S = 1.0  # the wait before try k is RETRY_WAIT_S * 2**(k-1), at most MAX_WAIT_S
MAX_WAIT_S = 30.0
TIMEOUT_S = 60.0  # per socket operation
CHUNK = 1 << 20
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<?xml")


class DownloadError(ValueError):
    """A file could not be fetched or failed its check; nothing was left where a later run would load it."""


@dataclass(frozen=True)
class Expected:
    """What a downloaded file must be: its size in bytes and its hashes (None: not known, not checked)."""

    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


class _Retry(Exception):
    """A try failed in a way another try may fix (dropped connection, server error): resume and try again."""


class _NextUrl(Exception):
    """This URL cannot give the file (404, HTML page, wrong hash, redirect loop): try the next one."""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def cache_dir() -> Path:
    """samforge's cache folder: ``$SAMFORGE_CACHE``, else ``$XDG_CACHE_HOME/samforge``, else ``~/.cache/samforge``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "samforge"
    return Path.home() / ".cache" / "samforge"


def weights_dir() -> Path:
    """Where downloaded weights live: ``<cache>/weights``."""
    return cache_dir() / "weights"


def is_offline() -> bool:
    """True when ``SAMFORGE_OFFLINE`` or ``HF_HUB_OFFLINE`` is set (to anything but empty, 0, false, no, off)."""
    return _truthy(ENV_OFFLINE) or _truthy(ENV_HF_OFFLINE)


def mirrored(urls: tuple[str, ...], filename: str) -> tuple[str, ...]:
    """``urls``, or only ``$SAMFORGE_WEIGHTS_MIRROR/filename`` when that is set."""
    prefix = os.environ.get(ENV_MIRROR, "").strip()
    if not prefix:
        return urls
    if urlparse(prefix).scheme not in ("http", "https") or not urlparse(prefix).netloc:
        raise ValueError(f"{ENV_MIRROR} must be an http(s) URL prefix such as http://host/weights/, got {prefix!r}")
    return (prefix.rstrip("/") + "/" + filename,)


def retries() -> int:
    """How many more tries a download gets after a dropped connection or a server error (``SAMFORGE_DOWNLOAD_RETRIES``,
    default 5)."""
    text = os.environ.get(ENV_RETRIES, "").strip()
    if not text:
        return DEFAULT_RETRIES
    if not text.isdigit():
        raise ValueError(f"{ENV_RETRIES} must be a whole number >= 0, got {text!r}")
    return int(text)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def check_file(path: Path, expected: Expected, source: str) -> None:
    """``DownloadError`` unless ``path`` has the expected size and hashes; the message shows expected and found."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise DownloadError(f"{source}: size mismatch: expected {expected.size} bytes, got {size} bytes")
    for algorithm in ("sha256", "md5"):
        want = getattr(expected, algorithm)
        if want is None:
            continue
        got = file_digest(path, algorithm)
        if got != want:
            raise DownloadError(f"{source}: {algorithm.upper()} mismatch: expected {want}, got {got} "
                                f"({size} bytes)")


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified.json")


def is_verified(path: Path, expected: Expected, stamp: Path | None = None) -> bool:
    """True when ``path`` is a file that passed :func:`check_file`: checked once, then remembered in a stamp file
    (``stamp``, default ``.NAME.verified.json`` beside it) while its size and modification time stay the same.
    A file present but wrong raises ``DownloadError`` saying so (it was put there by hand, or damaged)."""
    if not path.is_file():
        return False
    stamp = stamp or _stamp_path(path)
    st = path.stat()
    record = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "sha256": expected.sha256, "md5": expected.md5}
    with contextlib.suppress(OSError, ValueError):
        if json.loads(stamp.read_text()) == record:
            return True
    try:
        check_file(path, expected, f"the cached file {path}")
    except DownloadError as e:
        raise DownloadError(f"{e}; delete it to download it again") from None
    with contextlib.suppress(OSError):  # a read-only cache still works, it is only checked again next time
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(stamp.name + f".{os.getpid()}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, stamp)
    return True


def fetch(urls: tuple[str, ...], dest: Path, expected: Expected, *, what: str | None = None,
          progress: bool = True) -> Path:
    """``dest``, downloaded from the first of ``urls`` that gives the expected file unless already there and
    verified (then no network access at all). ``what`` names the file in messages (default: its name)."""
    if not urls or not all(isinstance(u, str) and urlparse(u).scheme in ("http", "https") for u in urls):
        raise ValueError(f"fetch expects one or more http(s) URLs, got {urls!r}")
    dest = Path(dest)
    what = what or dest.name
    if is_verified(dest, expected):
        return dest
    if is_offline():
        raise FileNotFoundError(
            f"{what} is not in the cache and {ENV_OFFLINE}/{ENV_HF_OFFLINE} forbids downloading it: fetch "
            f"{urls[0]} by hand and put it at {dest} (or unset {ENV_OFFLINE} and {ENV_HF_OFFLINE})")
    from filelock import FileLock, Timeout

    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dest) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"samforge: waiting for another process downloading {what} (lock {lock.lock_file})", file=sys.stderr)
        lock.acquire()
    try:
        if is_verified(dest, expected):  # the other process finished it
            return dest
        return _fetch_locked(urls, dest, expected, what, progress)
    finally:
        lock.release()


def _fetch_locked(urls: tuple[str, ...], dest: Path, expected: Expected, what: str, progress: bool) -> Path:
    part = dest.with_name(f".{dest.name}.part")
    failures = []
    for url in urls:
        tries = 0
        size = f" ({expected.size / 2**20:,.0f} MiB)" if expected.size else ""
        print(f"samforge: downloading {what}{size} from {url} to {dest}", file=sys.stderr)
        while True:
            try:
                _download(url, part, expected, what, progress)
                check_file(part, expected, f"{what} from {url}")
            except _Retry as e:
                tries += 1
                if tries > retries():
                    kept = part.stat().st_size if part.is_file() else 0
                    failures.append(f"{url}: {e}; gave up after {tries} tries (the {kept} bytes fetched so far are "
                                    f"kept in {part}; the next run resumes from there)")
                    break
                wait = min(RETRY_WAIT_S * 2 ** (tries - 1), MAX_WAIT_S)
                print(f"samforge: {what}: {e}; trying again ({tries}/{retries()}) in {wait:g} s", file=sys.stderr)
                time.sleep(wait)
                continue
            except (_NextUrl, DownloadError) as e:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                failures.append(f"{url}: {e}" if isinstance(e, _NextUrl) else str(e))
                break
            with open(part, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(part, dest)
            is_verified(dest, expected)  # writes the stamp: the next run trusts the file without hashing it again
            return dest
    raise DownloadError(f"could not download {what}: " + "; ".join(failures))


def _download(url: str, part: Path, expected: Expected, what: str, progress: bool) -> None:
    """One try: fetch ``url`` into ``part``, resuming from its current length with a Range request."""
    offset = part.stat().st_size if part.is_file() else 0
    if expected.size is not None and offset > expected.size:  # not a prefix of this file: start again
        part.unlink()
        offset = 0
    headers = {"User-Agent": "samforge", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # our partial file is not a prefix the server knows: start again
            part.unlink()
            raise _Retry("the server refused to resume (HTTP 416)") from None
        if 300 <= e.code < 400:
            raise _NextUrl(f"HTTP {e.code}: too many redirects (a redirect loop?)") from None
        if e.code >= 500 or e.code in (408, 429):
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise _NextUrl(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (socket.gaierror, ssl.SSLError)):  # no such host, or a certificate refused: final
            raise _NextUrl(f"could not connect ({reason})") from None
        raise _Retry(f"could not connect ({reason})") from None
    with response:
        kind = response.headers.get("Content-Type", "")
        if "text/html" in kind.lower():
            raise _NextUrl(f"the server returned an HTML page ({kind}), not a checkpoint (a login, error or "
                           "download-confirmation page?)")
        resumed = offset and response.status == 206 and \
            response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else expected.size
        _copy(response, part, start, total, url, what, progress)


def _copy(response: http.client.HTTPResponse, part: Path, start: int, total: int | None, url: str, what: str,
          progress: bool) -> None:
    from tqdm import tqdm

    received = start
    try:
        out = open(part, "ab" if start else "wb")
    except OSError as e:
        raise _disk_error(e, part) from None
    with out, tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=what,
                   disable=None if progress else True, file=sys.stderr) as bar:
        while True:
            try:
                chunk = response.read(CHUNK)
            except (http.client.HTTPException, TimeoutError, ConnectionError, OSError) as e:
                raise _Retry(f"the connection broke after {received} bytes ({type(e).__name__})") from None
            if not chunk:
                break
            if received == 0 and chunk.lstrip()[:16].lower().startswith(HTML_STARTS):
                raise _NextUrl("the server returned an HTML page, not a checkpoint")
            try:
                out.write(chunk)
            except OSError as e:
                out.close()
                raise _disk_error(e, part) from None
            received += len(chunk)
            bar.update(len(chunk))
        try:
            out.flush()
            os.fsync(out.fileno())
        except OSError as e:
            raise _disk_error(e, part) from None
    if total is not None and received < total:
        raise _Retry(f"the connection closed after {received} of {total} bytes")


def _disk_error(e: OSError, part: Path) -> OSError:
    """The temporary file removed, and the write error raised with the file it was for."""
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    return OSError(e.errno or errno.EIO, f"could not write the download ({e.strerror or e}); the partial file "
                   "was removed", str(part))
