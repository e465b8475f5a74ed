"""The official weights by name: the table, and downloads against a local HTTP server on 127.0.0.1 (no test
reaches the network): verify, cache hit without a request, resume, give up, hash/size mismatch, HTTP errors,
redirect loop, HTML, full disk, offline, mirror, two downloads at once, Hugging Face ids, and the CLI."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
import socket
import sys
import threading
import time
import types
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from samforge import sam_model_registry
from samforge.cli.finetune import parse_base
from samforge.cli.main import main
from samforge.data import make_scene
from samforge.models.configs import SAM_CONFIGS
from samforge.models.sam2 import SAM2_CONFIGS, build_sam2
from samforge.utils import save_png
from samforge.weights import (HF_IDS, UNKNOWN, WEIGHTS, DownloadError, MissingDependency, OfficialWeights,
                              cache_dir, download, resolve_checkpoint, weights_dir)

PAYLOAD = os.urandom(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """Files served by path, with a behaviour per path, and every request recorded (method, path, Range)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def count(self, path: str | None = None) -> int:
        return sum(1 for r in self.requests if path is None or r[1] == path)


class _Handler(BaseHTTPRequestHandler):
    server_state: Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        state = self.server_state
        path = urlparse(self.path).path
        with state.lock:
            state.requests.append(("GET", path, self.headers.get("Range")))
            nth = state.count(path)
        mode = state.behaviour.get(path, "")
        if mode == "404" or path not in state.files and mode not in ("loop",):
            self.send_error(404, "Not Found")
            return
        if mode == "500":
            self.send_error(500, "Internal Server Error")
            return
        if mode == "loop":
            self.send_response(302)
            self.send_header("Location", path)
            self.end_headers()
            return
        body, status, start = state.files[path], 200, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and int(match[1]) < len(body):
            start, status = int(match[1]), 206
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8" if mode == "html" else "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        data = body[start:]
        if mode == "cut_always" or (mode == "cut_first" and nth == 1):
            data = data[: len(data) // 2]  # then the connection closes: the client sees a short body
        if mode == "slow":
            for i in range(0, len(data), 30_000):
                self.wfile.write(data[i:i + 30_000])
                time.sleep(0.02)
            return
        self.wfile.write(data)


@pytest.fixture()
def server() -> Server:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache per test; online, no mirror, no waits between tries."""
    monkeypatch.setenv("SAMFORGE_CACHE", str(tmp_path / "cache"))
    for name in ("SAMFORGE_OFFLINE", "HF_HUB_OFFLINE", "SAMFORGE_WEIGHTS_MIRROR", "SAMFORGE_DOWNLOAD_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)
    return tmp_path / "cache"


def fake_entry(monkeypatch, name: str, body: bytes, model_type: str = "vit_small", **changes) -> OfficialWeights:
    """A table entry for ``body`` (registered for this test); its official URL is never reached (tests use the
    mirror or expect no request)."""
    filename = f"{name}.pth"
    entry = OfficialWeights(name, model_type, filename, (f"https://weights.invalid/{filename}",), len(body),
                            hashlib.sha256(body).hexdigest())
    entry = dataclasses.replace(entry, **changes)
    monkeypatch.setitem(WEIGHTS, name, entry)
    return entry


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


def leftovers(folder: Path, name: str = "model.pth") -> list[Path]:
    """The downloaded file or its partial, wherever they are in the cache (lock and stamp files aside)."""
    return [p for p in folder.rglob("*") if p.name in (name, f".{name}.part")]


# ----------------------------------------------------------------------------------------------------- table


def test_every_table_entry_is_well_formed():
    wanted = {"sam_vit_h", "sam_vit_l", "sam_vit_b", "medsam_vit_b"} | {
        f"{v}_hiera_{s}" for v in ("sam2", "sam2.1") for s in ("tiny", "small", "base_plus", "large")}
    assert wanted <= set(WEIGHTS)
    for name, w in WEIGHTS.items():
        assert w.name == name
        assert w.model_type in (*SAM_CONFIGS, *SAM2_CONFIGS), name
        assert w.urls, name
        for url in w.urls:
            parsed = urlparse(url)
            assert parsed.scheme == "https" and parsed.netloc, url
            assert Path(parsed.path).name == w.filename, (url, w.filename)  # the released file name
        assert w.sha256 == UNKNOWN or re.fullmatch(r"[0-9a-f]{64}", w.sha256), name
        assert w.size is None or (isinstance(w.size, int) and w.size > 1_000_000), name
        assert w.md5 is None or re.fullmatch(r"[0-9a-f]{32}", w.md5), name
        if w.hf_repo:
            assert w.hf_repo.startswith("facebook/") and HF_IDS[w.hf_repo] == name
    assert len({w.sha256 for w in WEIGHTS.values() if w.sha256 != UNKNOWN}) == sum(
        w.sha256 != UNKNOWN for w in WEIGHTS.values())  # no hash copied onto two files
    assert WEIGHTS["sam2.1_hiera_tiny"].model_type == "sam2.1_hiera_t" and WEIGHTS["sam_vit_b"].model_type == "vit_b"


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("SAMFORGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "samforge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "samforge"


# ------------------------------------------------------------------------------------------------- downloads


def test_download_verifies_and_a_cached_file_needs_no_request(server, cache, monkeypatch):
    server.files["/w/model.pth"] = PAYLOAD
    url = server.url("/w/model.pth") + f"#sha256={PAYLOAD_SHA}"
    path = resolve_checkpoint(url)
    assert path.read_bytes() == PAYLOAD and path.name == "model.pth" and cache in path.parents
    assert server.count() == 1 and no_partial_files(cache)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used for a cached file")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(download, "file_digest", no_network)  # verified once: not hashed again either
    assert resolve_checkpoint(url) == path
    assert server.count() == 1


def test_official_name_through_the_mirror(server, cache, monkeypatch):
    entry = fake_entry(monkeypatch, "test_weights", PAYLOAD)
    server.files[f"/mirror/{entry.filename}"] = PAYLOAD
    monkeypatch.setenv("SAMFORGE_WEIGHTS_MIRROR", server.url("/mirror/"))
    path = resolve_checkpoint("test_weights")
    assert path == weights_dir() / entry.filename and path.read_bytes() == PAYLOAD
    assert [r[1] for r in server.requests] == [f"/mirror/{entry.filename}"]


def test_resume_after_a_dropped_connection(server, cache):
    server.files["/w/model.pth"] = PAYLOAD
    server.behaviour["/w/model.pth"] = "cut_first"
    path = resolve_checkpoint(server.url("/w/model.pth") + f"#sha256={PAYLOAD_SHA}")
    assert path.read_bytes() == PAYLOAD
    assert [r[2] for r in server.requests] == [None, f"bytes={len(PAYLOAD) // 2}-"]  # resumed where it broke
    assert no_partial_files(cache)


def test_gives_up_after_the_retries_and_leaves_nothing_loadable(server, cache, monkeypatch):
    server.files["/w/model.pth"] = PAYLOAD
    server.behaviour["/w/model.pth"] = "cut_always"
    monkeypatch.setenv("SAMFORGE_DOWNLOAD_RETRIES", "2")
    with pytest.raises(DownloadError, match="gave up after 3 tries") as err:
        resolve_checkpoint(server.url("/w/model.pth") + f"#sha256={PAYLOAD_SHA}")
    assert "resumes" in str(err.value)
    assert server.count() == 3
    assert not [p for p in cache.rglob("model.pth")]  # only the hidden partial, which no loader reads


def test_hash_mismatch_deletes_the_file_and_shows_both_hashes(server, cache):
    server.files["/w/model.pth"] = PAYLOAD
    wrong = "0" * 64
    with pytest.raises(DownloadError) as err:
        resolve_checkpoint(server.url("/w/model.pth") + f"#sha256={wrong}")
    assert wrong in str(err.value) and PAYLOAD_SHA in str(err.value)
    assert not leftovers(cache)


def test_size_mismatch_is_an_error(server, cache, monkeypatch):
    entry = fake_entry(monkeypatch, "test_weights", PAYLOAD, size=len(PAYLOAD) + 1)
    server.files[f"/m/{entry.filename}"] = PAYLOAD
    monkeypatch.setenv("SAMFORGE_WEIGHTS_MIRROR", server.url("/m"))
    with pytest.raises(DownloadError, match=f"expected {len(PAYLOAD) + 1} bytes, got {len(PAYLOAD)} bytes"):
        resolve_checkpoint("test_weights")
    assert not (weights_dir() / entry.filename).exists() and no_partial_files(cache)


@pytest.mark.parametrize("mode, requests, message", [("404", 1, "HTTP 404"), ("500", 2, "HTTP 500"),
                                                     ("loop", 1, "redirect")])
def test_http_errors_and_redirect_loops(server, cache, monkeypatch, mode, requests, message):
    server.files["/w/model.pth"] = PAYLOAD
    server.behaviour["/w/model.pth"] = mode
    monkeypatch.setenv("SAMFORGE_DOWNLOAD_RETRIES", "1")
    with pytest.raises(DownloadError, match=message):
        resolve_checkpoint(server.url("/w/model.pth"))
    count = server.count()
    assert (count == requests) if mode != "loop" else (2 <= count <= 12)  # urllib follows a few hops, then stops
    assert not leftovers(cache)


@pytest.mark.parametrize("mode", ["html", ""])
def test_an_html_page_is_not_a_checkpoint(server, cache, mode):
    server.files["/w/model.pth"] = b"<!DOCTYPE html><html><body>Sign in to download</body></html>"
    server.behaviour["/w/model.pth"] = mode  # by its Content-Type, or by its first bytes
    with pytest.raises(DownloadError, match="HTML page"):
        resolve_checkpoint(server.url("/w/model.pth"))
    assert not leftovers(cache)


def test_a_full_disk_removes_the_temporary_file(server, cache, monkeypatch):
    server.files["/w/model.pth"] = PAYLOAD
    monkeypatch.setattr(download, "CHUNK", 65_536)
    real_open = open

    class FullAfterOneChunk:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullAfterOneChunk(f) if ("w" in mode or "a" in mode) else f

    monkeypatch.setattr(download, "open", fake_open, raising=False)
    with pytest.raises(OSError) as err:
        resolve_checkpoint(server.url("/w/model.pth"))
    assert err.value.errno == errno.ENOSPC and err.value.filename.endswith(".model.pth.part")
    assert not leftovers(cache)


@pytest.mark.parametrize("variable", ["SAMFORGE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_opens_a_socket(server, cache, monkeypatch, variable):
    entry = fake_entry(monkeypatch, "test_weights", PAYLOAD)
    server.files[f"/m/{entry.filename}"] = PAYLOAD
    monkeypatch.setenv("SAMFORGE_WEIGHTS_MIRROR", server.url("/m/"))
    monkeypatch.setenv(variable, "1")

    def no_network(*args, **kwargs):
        raise AssertionError("a socket was opened in offline mode")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(FileNotFoundError) as err:
        resolve_checkpoint("test_weights")
    target = weights_dir() / entry.filename
    assert server.url(f"/m/{entry.filename}") in str(err.value) and str(target) in str(err.value)
    assert server.count() == 0
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)  # fetched by hand, as the message says
    assert resolve_checkpoint("test_weights") == target
    target.write_bytes(PAYLOAD[:-1] + b"x")  # a damaged copy is refused, not loaded
    with pytest.raises(DownloadError, match="delete it"):
        resolve_checkpoint("test_weights")
    assert server.count() == 0


def test_two_downloads_at_once_end_with_one_good_file(server, cache):
    server.files["/w/model.pth"] = PAYLOAD
    server.behaviour["/w/model.pth"] = "slow"
    url = server.url("/w/model.pth") + f"#sha256={PAYLOAD_SHA}"
    results, errors = [], []

    def worker():
        try:
            results.append(resolve_checkpoint(url, progress=False))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == PAYLOAD
    assert server.count() == 1  # the second waited on the lock and found the verified file
    assert no_partial_files(cache)


def test_unknown_name_lists_the_known_ones_and_the_nearest():
    with pytest.raises(FileNotFoundError) as err:
        resolve_checkpoint("sam2.1_hiera_tinny")
    text = str(err.value)
    assert "Did you mean 'sam2.1_hiera_tiny'?" in text
    assert all(name in text for name in ("sam_vit_h", "medsam_vit_b", "facebook/sam2.1-hiera-large"))
    with pytest.raises(FileNotFoundError, match="not found: runs/a/missing.pth$"):
        resolve_checkpoint("runs/a/missing.pth")  # a path stays a path: no list of names
    with pytest.raises(ValueError, match="sha256"):
        resolve_checkpoint("http://127.0.0.1:1/x.pth#md5=abc")
    with pytest.raises(TypeError, match="got int"):
        resolve_checkpoint(3)


# ------------------------------------------------------------------------------------------ Hugging Face ids


def test_hugging_face_id_through_huggingface_hub(tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, "test_weights", PAYLOAD, hf_repo="facebook/test-weights")
    monkeypatch.setitem(HF_IDS, "facebook/test-weights", "test_weights")
    snapshot = tmp_path / "hf" / entry.filename
    snapshot.parent.mkdir()
    snapshot.write_bytes(PAYLOAD)
    calls = []

    def hf_hub_download(repo_id, filename, local_files_only=False):
        calls.append((repo_id, filename, local_files_only))
        return str(snapshot)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    assert resolve_checkpoint("facebook/test-weights") == snapshot
    monkeypatch.setenv("SAMFORGE_OFFLINE", "1")
    assert resolve_checkpoint("facebook/test-weights") == snapshot
    assert calls == [("facebook/test-weights", entry.filename, False), ("facebook/test-weights", entry.filename, True)]
    snapshot.write_bytes(PAYLOAD + b"!")  # the hub's file is checked against the table too
    with pytest.raises(DownloadError, match="size mismatch"):
        resolve_checkpoint("facebook/test-weights")


def test_hugging_face_id_without_huggingface_hub_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(MissingDependency, match="pip install huggingface_hub") as err:
        resolve_checkpoint("facebook/sam2.1-hiera-tiny")
    assert isinstance(err.value, ValueError) and "sam2.1_hiera_tiny" in str(err.value)


# --------------------------------------------------------------------------------------- models and the CLI


@pytest.fixture(scope="module")
def vit_small_bytes(tmp_path_factory) -> bytes:
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("w") / "vit_small.pth"
    torch.save(sam_model_registry["vit_small"]().state_dict(), path)
    return path.read_bytes()


def test_model_builders_take_names_and_urls(server, cache, monkeypatch, vit_small_bytes, tmp_path):
    entry = fake_entry(monkeypatch, "test_vit_small", vit_small_bytes)
    server.files[f"/m/{entry.filename}"] = vit_small_bytes
    monkeypatch.setenv("SAMFORGE_WEIGHTS_MIRROR", server.url("/m/"))
    sam = sam_model_registry["vit_small"](checkpoint="test_vit_small")
    local = tmp_path / "local.pth"
    local.write_bytes(vit_small_bytes)
    reference = sam_model_registry["vit_small"](checkpoint=local)
    for (k, a), (_, b) in zip(sam.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), k
    # build_sam2 resolves the same way: the downloaded file is read, then refused as not a SAM 2 model
    server.files["/u/vit_small.pth"] = vit_small_bytes
    with pytest.raises(ValueError, match="does not match the model"):
        build_sam2("sam2.1_hiera_t", server.url("/u/vit_small.pth"), device="cpu")
    assert server.count("/u/vit_small.pth") == 1


def test_base_names_imply_their_model_type():
    assert parse_base("sam_vit_b") == ("vit_b", "sam_vit_b")
    assert parse_base("sam2.1_hiera_tiny") == ("sam2.1_hiera_t", "sam2.1_hiera_tiny")
    assert parse_base("vit_b:sam_vit_b") == ("vit_b", "sam_vit_b")
    assert parse_base("runs/a/checkpoints/best.pt") == ("checkpoint", "runs/a/checkpoints/best.pt")


def test_cli_weights_and_predict_with_a_name_and_a_url(server, cache, monkeypatch, capsys, vit_small_bytes, tmp_path):
    entry = fake_entry(monkeypatch, "test_vit_small", vit_small_bytes)
    server.files[f"/m/{entry.filename}"] = vit_small_bytes
    server.files["/u/model.pth"] = PAYLOAD
    monkeypatch.setenv("SAMFORGE_WEIGHTS_MIRROR", server.url("/m/"))

    assert main(["weights", "list"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test_vit_small ")]
    assert len(listed) == 1 and "vit_small" in listed[0] and "cached" not in listed[0]

    assert main(["weights", "download", server.url("/u/model.pth") + f"#sha256={PAYLOAD_SHA}"]) == 0
    out = capsys.readouterr().out
    downloaded = Path(out.strip().rsplit(": ", 1)[1])
    assert downloaded.read_bytes() == PAYLOAD

    scene = make_scene(seed=3, image_size=(48, 64))
    image = tmp_path / "scene.png"
    save_png(scene.image, image)
    code = main(["predict", "--checkpoint", "test_vit_small", "--image", str(image), "--point", "30,20",
                 "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "RANDOM weights" not in captured.out and (tmp_path / "out" / "mask.png").is_file()

    assert main(["weights", "list"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test_vit_small ")]
    assert "cached" in listed[0]
    assert main(["weights", "path", "test_vit_small"]) == 0
    assert capsys.readouterr().out.strip() == str(weights_dir() / entry.filename)

    assert main(["weights", "download", "sam_vit_bb"]) == 2
    assert "Did you mean 'sam_vit_b'?" in capsys.readouterr().err
