"""``samforge annotate``'s web API (samforge/serve), driven with FastAPI's TestClient and, for raw paths,
a real uvicorn server: every endpoint, the saved files, the export read back by the dataset readers,
the safety limits (paths, sizes, point counts, malformed JSON, concurrent writes, remote binds)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from samforge.cli.main import main
from samforge.data.readers import CocoDataset, MaskFolderDataset, open_dataset
from samforge.data.synthetic import make_scene
from samforge.models.build import build_sam
from samforge.predict.predictor import SamPredictor
from samforge.serve import ServerThread, check_host, create_app
from samforge.serve.guard import TOKEN_HEADER
from samforge.serve.images import ImageFolder
from samforge.serve.server import allowed_hosts, is_loopback
from samforge.serve.store import AnnotationStore, StoreError, check_labels, decode_rle_counts, mask_to_rle

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # starlette's TestClient on httpx, pycocotools
]
TestClient = pytest.importorskip("fastapi.testclient").TestClient

HW = (96, 128)
NAMES = ("s0.png", "s1.png", "s2.jpg")
LABELS = ["cell", "nucleus"]
SECRET = "top secret, outside IMAGES_DIR"
EVERYTHING = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam("vit_small").eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("annotate")
    folder = root / "images"
    folder.mkdir()
    for i, name in enumerate(NAMES):
        Image.fromarray(make_scene(i, image_size=HW).image).save(folder / name, quality=95)
    (folder / "notes.txt").write_text("not an image")
    (root / "secret.txt").write_text(SECRET)
    Image.fromarray(make_scene(9, image_size=HW).image).save(root / "outside.png")
    (folder / "link.png").symlink_to(root / "outside.png")  # leads out of the folder: not served
    return folder


@pytest.fixture()
def make_client(model, images, tmp_path):
    clients = []

    def make(labels_dir: Path | None = None, **kw) -> TestClient:
        app = create_app(model, images, labels_dir or tmp_path / "labels", LABELS, model_name="vit_small",
                         everything=EVERYTHING, **kw)
        client = page_client(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def page_client(app) -> TestClient:
    """A client that sends what the annotator's page sends: its token and a JSON Content-Type."""
    return TestClient(app, headers={TOKEN_HEADER: app.state.token, "Content-Type": "application/json"})


@pytest.fixture()
def client(make_client) -> TestClient:
    return make_client()


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def predict(client, name="s0.png", **body) -> dict:
    body = body or {"points": [{"x": 60, "y": 40, "label": 1}]}
    r = client.post(f"/api/images/{name}/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def accept(client, name="s0.png", label="cell", **prompt) -> dict:
    mask_id = predict(client, name, **prompt)["mask_id"]
    r = client.post(f"/api/images/{name}/objects", json={"label": label, "mask_id": mask_id})
    assert r.status_code == 200, r.text
    return r.json()["object"]


def saved(labels_dir: Path, stem="s0") -> dict:
    return json.loads((labels_dir / "annotations" / f"{stem}.json").read_text())


# ------------------------------------------------------------------------------------- page, files
def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "/static/app.js" in r.text
    for path in ("/static/app.js", "/static/style.css"):
        assert client.get(path).status_code == 200
    assert client.get("/static/nothing.js").status_code == 404


def test_config_and_image_list(client):
    cfg = client.get("/api/config").json()
    assert cfg["labels"] == LABELS and cfg["images"] == 3 and cfg["everything"] and cfg["max_points"] == 64
    listing = client.get("/api/images").json()
    assert [im["name"] for im in listing["images"]] == list(NAMES)
    assert all(im["width"] == HW[1] and im["height"] == HW[0] and not im["done"] and im["objects"] == 0
               for im in listing["images"])
    skipped = {s["name"]: s["why"] for s in listing["skipped"]}
    assert "notes.txt" in skipped and "outside the folder" in skipped["link.png"]


def test_image_and_thumbnail(client, images):
    r = client.get("/api/images/s0.png/image")
    assert r.status_code == 200 and r.content == (images / "s0.png").read_bytes()
    assert r.headers["content-type"] == "image/png"
    r = client.get("/api/images/s2.jpg/thumbnail?size=64")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with Image.open(__import__("io").BytesIO(r.content)) as im:
        assert max(im.size) == 64
    assert client.get("/api/images/s0.png/thumbnail?size=4").status_code == 422
    for path in ("/api/images/nope.png/image", "/api/images/link.png/image", "/api/images/notes.txt/thumbnail"):
        r = client.get(path)
        assert r.status_code == 404 and "no image named" in r.json()["detail"]


# --------------------------------------------------------------------------------------- the model
def test_embed_is_cached_and_next_image_prefetched(client):
    r = client.post("/api/images/s0.png/embed").json()
    assert r["cached"] is False and r["embedding_seconds"] > 0
    deadline = time.time() + 60
    while time.time() < deadline:  # the next image's embedding is computed in the background
        embedded = {im["name"]: im["embedded"] for im in client.get("/api/images").json()["images"]}
        if embedded["s1.png"]:
            break
        time.sleep(0.05)
    assert embedded == {"s0.png": True, "s1.png": True, "s2.jpg": False}
    assert client.post("/api/images/s0.png/embed").json()["cached"] is True
    assert client.post("/api/images/s1.png/embed").json()["cached"] is True


def test_embedding_cache_is_bounded(make_client):
    client = make_client(cache_size=1)
    for name in NAMES:
        client.post(f"/api/images/{name}/predict", json={"points": [{"x": 5, "y": 5}]})
    cache = client.app.state.annotator.cache
    cache.close()  # waits for a prefetch under way
    assert len(cache.cached()) == 1


@pytest.mark.parametrize("body", [
    {"points": [{"x": 60, "y": 40, "label": 1}]},
    {"points": [{"x": 60, "y": 40, "label": 1}, {"x": 10, "y": 80, "label": 0}]},
    {"box": [20, 10, 100, 70]},
    {"points": [{"x": 60, "y": 40}], "box": [20, 10, 100, 70], "multimask": True},
])
def test_predict_matches_the_predictor(client, model, images, body):
    r = predict(client, **body)
    predictor = SamPredictor(model)
    predictor.set_image(np.asarray(Image.open(images / "s0.png").convert("RGB")))
    pts = body.get("points", [])
    masks, scores, _ = predictor.predict(
        np.array([[p["x"], p["y"]] for p in pts]) if pts else None,
        np.array([p.get("label", 1) for p in pts]) if pts else None,
        np.array(body["box"]) if "box" in body else None,
        multimask_output=body.get("multimask", len(pts) == 1 and "box" not in body))
    best = int(np.argmax(scores))
    got = decode(r["mask"])
    assert got.shape == HW and r["area"] == int(got.sum()) > 0
    assert (got == masks[best]).mean() > 0.999  # the same model on the same image, up to threshold ties
    assert r["score"] == pytest.approx(float(scores[best]), abs=1e-4)
    assert r["ms"] > 0 and len(r["mask_id"]) == 16


@pytest.mark.parametrize("body, said", [
    ({}, "at least one point or a box"),
    ({"points": []}, "at least one point or a box"),
    ({"points": [{"x": 500, "y": 40}]}, "outside the image"),
    ({"points": [{"x": -1, "y": 40}]}, "outside the image"),
    ({"points": [{"x": 5, "y": 5, "label": 2}]}, "points.0.label"),
    ({"points": [{"x": 5}]}, "points.0.y: Field required"),
    ({"points": [{"x": 5, "y": 5}] * 65}, "at most 64"),
    ({"box": [100, 10, 20, 70]}, "0 <= x0 < x1"),
    ({"box": [0, 0, 10]}, "box"),
    ({"points": [{"x": 5, "y": 5}], "extra": 1}, "extra: Extra inputs are not permitted"),
    ({"points": "here"}, "points"),
])
def test_predict_rejects_bad_prompts(client, body, said):
    r = client.post("/api/images/s0.png/predict", json=body)
    assert r.status_code == 422
    assert said in r.json()["detail"], r.json()


def test_non_finite_numbers_are_refused(client):
    r = client.post("/api/images/s0.png/predict", content=b'{"points": [{"x": NaN, "y": 3}]}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "points.0.x" in r.json()["detail"]


@pytest.mark.parametrize("content, said", [
    (b'{"points": [', "malformed JSON"),
    (b"points=1", "malformed JSON"),
    (b"[1, 2]", "valid dictionary"),
])
def test_malformed_json_gets_422_with_a_message(client, content, said):
    r = client.post("/api/images/s0.png/predict", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and said in r.json()["detail"], r.json()
    r = client.post("/api/images/s0.png/predict", content=b'{"points": []}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["detail"]


def test_request_bodies_are_bounded(make_client):
    client = make_client(max_body_bytes=4096)
    big = json.dumps({"points": [{"x": 1.0, "y": 1.0}] * 300}).encode()
    assert len(big) > 4096
    r = client.post("/api/images/s0.png/predict", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]

    def chunks():  # streamed without a Content-Length
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    r = client.post("/api/images/s0.png/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.post("/api/images/s0.png/predict", json={"points": [{"x": 1, "y": 1}]}).status_code == 200


def test_everything_proposes_masks_to_accept(client, tmp_path):
    r = client.post("/api/images/s1.png/everything")
    assert r.status_code == 200, r.text
    proposals = r.json()["proposals"]
    assert proposals and all(decode(p["mask"]).shape == HW for p in proposals)
    r = client.post("/api/images/s1.png/objects", json={"label": "nucleus", "mask_id": proposals[0]["mask_id"]})
    obj = r.json()["object"]
    assert obj["source"] == "everything" and obj["label"] == "nucleus"
    assert decode(obj["segmentation"]).sum() == proposals[0]["area"]
    assert saved(tmp_path / "labels", "s1")["objects"][0]["id"] == obj["id"]


# --------------------------------------------------------------------------------------- objects
def test_accept_relabel_delete_undo_done(client, tmp_path):
    labels = tmp_path / "labels"
    pred = predict(client)
    r = client.post("/api/images/s0.png/objects", json={"label": "cell", "mask_id": pred["mask_id"]})
    assert r.status_code == 200 and r.json()["objects"] == 1
    obj = r.json()["object"]
    assert obj["id"] == 1 and obj["source"] == "click" and obj["area"] == pred["area"]
    assert obj["prompts"]["points"] == [{"x": 60.0, "y": 40.0, "label": 1}]
    assert saved(labels)["objects"][0]["segmentation"] == pred["mask"]
    second = accept(client, label="nucleus", box=[20, 10, 100, 70])
    assert second["id"] == 2 and second["source"] == "box"

    r = client.patch("/api/images/s0.png/objects/1", json={"label": "nucleus"})
    assert r.status_code == 200 and saved(labels)["objects"][0]["label"] == "nucleus"
    r = client.patch("/api/images/s0.png/objects/1", json={"label": "dog"})
    assert r.status_code == 422 and "label must be one of ['cell', 'nucleus']" in r.json()["detail"]
    assert client.patch("/api/images/s0.png/objects/9", json={"label": "cell"}).status_code == 404
    assert client.delete("/api/images/s0.png/objects/9").status_code == 404

    r = client.delete("/api/images/s0.png/objects/1")
    assert r.status_code == 200 and [o["id"] for o in r.json()["objects"]] == [2]
    assert [o["id"] for o in client.get("/api/images/s0.png/annotations").json()["objects"]] == [2]
    r = client.post("/api/images/s0.png/undo")  # brings the deleted object back
    assert [(o["id"], o["label"]) for o in r.json()["objects"]] == [(1, "nucleus"), (2, "nucleus")]
    assert [o["id"] for o in saved(labels)["objects"]] == [1, 2]
    for _ in range(3):  # relabel, second accept, first accept
        assert client.post("/api/images/s0.png/undo").status_code == 200
    assert saved(labels)["objects"] == []
    r = client.post("/api/images/s0.png/undo")
    assert r.status_code == 409 and "nothing to undo" in r.json()["detail"]
    assert accept(client)["id"] == 3  # ids are never reused, even after undo

    r = client.put("/api/images/s0.png/done", json={"done": True})
    assert r.status_code == 200 and saved(labels)["done"] is True
    assert client.put("/api/images/s0.png/done", json={"done": "yes"}).status_code == 422
    listing = {im["name"]: im for im in client.get("/api/images").json()["images"]}
    assert listing["s0.png"]["done"] and listing["s0.png"]["objects"] == 1 and not listing["s1.png"]["done"]


def test_accept_checks_the_mask(client, tmp_path):
    mask = np.zeros(HW, bool)
    mask[10:30, 20:50] = True
    rle = mask_to_rle(mask)
    r = client.post("/api/images/s2.jpg/objects", json={"label": "cell", "segmentation": rle, "score": 0.5})
    assert r.status_code == 200 and r.json()["object"]["source"] == "api" and r.json()["object"]["area"] == 600
    other = predict(client, "s0.png")["mask_id"]
    bad = [
        ({"label": "cell", "mask_id": other}, "not a mask predicted for s2.jpg"),
        ({"label": "cell", "mask_id": "0" * 16}, "not a mask predicted"),
        ({"label": "cell"}, "exactly one of mask_id"),
        ({"label": "cell", "mask_id": other, "segmentation": rle}, "exactly one of mask_id"),
        ({"label": "cat", "segmentation": rle}, "label must be one of"),
        ({"label": "cell", "segmentation": {**rle, "size": [10, 10]}}, "the image's [96, 128]"),
        ({"label": "cell", "segmentation": {**rle, "counts": rle["counts"] + "1"}}, "RLE covers"),
        ({"label": "cell", "segmentation": {**rle, "counts": "zzzz\x7f"}}, "invalid character"),
        ({"label": "cell", "segmentation": {"size": [96, 128], "counts": "5"}}, "RLE covers 5 pixels"),
        ({"label": "cell", "segmentation": mask_to_rle(np.zeros(HW, bool))}, "the mask is empty"),
        ({"label": "cell", "segmentation": {**rle, "extra": 1}}, "segmentation.extra"),
        ({"label": "", "segmentation": rle}, "label"),
    ]
    for body, said in bad:
        r = client.post("/api/images/s2.jpg/objects", json=body)
        assert r.status_code == 422 and said in r.json()["detail"], (body, r.json())
    assert len(saved(tmp_path / "labels", "s2")["objects"]) == 1


def test_saved_labels_survive_a_restart(make_client, tmp_path):
    first = make_client()
    accept(first, label="cell")
    accept(first, label="nucleus", points=[{"x": 20, "y": 20, "label": 1}])
    before = first.get("/api/images/s0.png/annotations").json()
    again = make_client()  # a new server on the same folders
    after = again.get("/api/images/s0.png/annotations").json()
    assert after["objects"] == before["objects"]
    assert accept(again)["id"] == 3
    assert again.post("/api/images/s0.png/undo").status_code == 200  # this session's change
    assert again.post("/api/images/s0.png/undo").status_code == 409  # earlier ones are not in memory


def test_concurrent_requests_do_not_corrupt_saved_labels(client, tmp_path):
    n = 16
    masks = []
    for i in range(n):
        m = np.zeros(HW, bool)
        m[i * 5:i * 5 + 4, i * 7:i * 7 + 6] = True
        masks.append(m)
    errors: list = []
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        try:
            barrier.wait()
            r = client.post("/api/images/s1.png/objects",
                            json={"label": LABELS[i % 2], "segmentation": mask_to_rle(masks[i])})
            assert r.status_code == 200, r.text
            r = client.patch(f"/api/images/s1.png/objects/{r.json()['object']['id']}", json={"label": "nucleus"})
            assert r.status_code == 200, r.text
            client.put("/api/images/s1.png/done", json={"done": bool(i % 2)})
        except Exception as e:  # collected: an assertion in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    doc = saved(tmp_path / "labels", "s1")
    assert sorted(o["id"] for o in doc["objects"]) == list(range(1, n + 1))
    assert all(o["label"] == "nucleus" for o in doc["objects"]) and doc["next_id"] == n + 1
    decoded = sorted((decode(o["segmentation"]).nonzero()[0].min(), o["id"]) for o in doc["objects"])
    assert [row for row, _ in decoded] == [i * 5 for i in range(n)]  # every object, its own mask
    leftovers = [p.name for p in (tmp_path / "labels" / "annotations").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary files left behind


# ---------------------------------------------------------------------------------------- export
def test_export_is_read_by_the_dataset_readers(client, tmp_path, images):
    a = accept(client, "s0.png", "cell")
    b = accept(client, "s0.png", "nucleus", points=[{"x": 10, "y": 10, "label": 1}, {"x": 60, "y": 40, "label": 0}])
    c = accept(client, "s2.jpg", "nucleus", box=[10, 10, 60, 50])
    r = client.post("/api/export")
    assert r.status_code == 200, r.text
    result = r.json()
    out = tmp_path / "labels" / "export"
    assert result["folder"] == str(out) and result["images"] == 2 and result["objects"] == 3
    assert client.get(result["url"]).json()["categories"] == [
        {"id": 1, "name": "cell", "supercategory": "object"}, {"id": 2, "name": "nucleus", "supercategory": "object"}]

    coco = open_dataset(out / "annotations.json")
    assert isinstance(coco, CocoDataset) and len(coco) == 2 and not coco.bad_samples
    s0 = coco[0]
    assert Path(s0.name).name == "s0.png" and np.array_equal(s0.image, np.asarray(Image.open(images / "s0.png")))
    assert np.array_equal(s0.masks, np.stack([decode(a["segmentation"]), decode(b["segmentation"])]))
    assert np.array_equal(coco[1].masks[0], decode(c["segmentation"]))
    ann = json.loads((out / "annotations.json").read_text())["annotations"]
    assert [x["category_id"] for x in ann] == [1, 2, 2]

    folder = open_dataset(out)
    assert isinstance(folder, MaskFolderDataset) and len(folder) == 2
    with Image.open(out / "masks" / "s0.png") as im:
        assert im.mode.startswith("I")  # 16-bit instance labels
        lab = np.asarray(im)
    for k, obj in enumerate((a, b), start=1):  # painted largest first: a pixel keeps the smaller object
        larger = max((a, b), key=lambda o: o["area"])
        visible = decode(obj["segmentation"]) if obj is not larger else (
            decode(obj["segmentation"]) & ~decode(min((a, b), key=lambda o: o["area"])["segmentation"]))
        assert np.array_equal(lab == k, visible)
    assert len(folder[0].masks) == len(np.setdiff1d(np.unique(lab), [0]))

    client.delete(f"/api/images/s2.jpg/objects/{c['id']}")  # an image left without objects leaves the export
    assert client.post("/api/export").json()["images"] == 1
    assert not (out / "masks" / "s2.png").exists() and not (out / "images" / "s2.jpg").exists()
    assert len(open_dataset(out)) == 1 and len(open_dataset(out / "annotations.json")) == 1


def test_cli_export_only(client, tmp_path, images, capsys):
    accept(client, "s1.png", "cell")
    code = main(["annotate", str(images), "--out", str(tmp_path / "labels"), "--labels", "cell,nucleus",
                 "--export-only"])
    assert code == 0 and "exported 1 objects on 1 images" in capsys.readouterr().out
    assert len(open_dataset(tmp_path / "labels" / "export")) == 1


# ---------------------------------------------------------------------------------------- safety
@pytest.mark.parametrize("path", [
    "/labels/%2e%2e/secret.txt", "/labels/%2E%2E/%2E%2E/etc/passwd", "/labels/..%2fsecret.txt",
    "/labels//etc/passwd", "/labels/%2Fetc%2Fpasswd", "/labels/C:%5Cwindows",
    "/labels/annotations/%2e%2e/%2e%2e/secret.txt",
    "/api/images/..%2Fsecret.txt/image", "/api/images/%2Fetc%2Fpasswd/image", "/api/images/%2e%2e/image",
    "/static/%2e%2e/app.py", "/static/..%2f..%2fsecret.txt", "/labels/.hidden", "/labels/annotations",
])
def test_paths_outside_the_folders_are_not_served(client, path):
    r = client.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert SECRET not in r.text and "root:" not in r.text


def test_labels_dir_files_are_served(client):
    accept(client)
    r = client.get("/labels/annotations/s0.json")
    assert r.status_code == 200 and r.json()["objects"][0]["label"] == "cell"


@pytest.fixture()
def live_server(model, images, tmp_path):
    app = create_app(model, images, tmp_path / "labels", LABELS, allowed_hosts=allowed_hosts("127.0.0.1"))
    server = ServerThread(app)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("path", [
    "/labels/../../secret.txt", "/labels/../secret.txt", "/static/../../../secret.txt",
    "/labels/annotations/../../secret.txt", "/api/images/../../secret.txt", "/../secret.txt",
    "/labels/%2e%2e/%2e%2e/secret.txt", "/labels/" + "/".join([".."] * 12) + "/etc/passwd",
    "/api/images/../../outside.png/image",
])
def test_raw_traversal_paths_on_a_real_server(live_server, path):
    host, port = live_server.sock.getsockname()[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", path)  # sent as written: no client-side normalisation of ../
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    conn.close()
    assert resp.status in (400, 404), (path, resp.status)
    assert SECRET not in body and "root:" not in body


def test_host_header_is_checked_on_loopback(live_server):
    host, port = live_server.sock.getsockname()[:2]
    for header, status in (("evil.example", 400), (f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200)):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", "/api/config", headers={"Host": header})
        assert conn.getresponse().status == status, header
        conn.close()


def test_remote_bind_needs_allow_remote():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host) and check_host(host, allow_remote=False) is None
    with pytest.raises(ValueError, match="--allow-remote"):
        check_host("0.0.0.0", allow_remote=False)
    assert "WARNING" in check_host("0.0.0.0", allow_remote=True)
    assert allowed_hosts("0.0.0.0") is None and "localhost" in allowed_hosts("127.0.0.1")


def test_cli_refuses_remote_host_and_warns_with_allow_remote(images, tmp_path, capsys, monkeypatch):
    args = ["annotate", str(images), "--model-type", "vit_small", "--out", str(tmp_path / "l"), "--host", "0.0.0.0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "--allow-remote" in err
    import samforge.serve.server as server

    served = {}
    monkeypatch.setattr(server, "serve", lambda app, host, port, allow_remote: served.update(
        host=host, port=port, allow_remote=allow_remote))
    assert main([*args, "--allow-remote", "--port", "0"]) == 0
    assert "WARNING: serving on 0.0.0.0" in capsys.readouterr().out
    assert served == {"host": "0.0.0.0", "port": 0, "allow_remote": True}


# ------------------------------------------------------------------------------------ input checks
def test_public_functions_check_their_inputs(model, images, tmp_path):
    with pytest.raises(TypeError, match="samforge Sam or SAM2Base"):
        create_app("model", images, tmp_path)
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(model, images, tmp_path / "l", max_body_bytes=10)
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="must differ from IMAGES_DIR"):
        AnnotationStore(images, ImageFolder(images), ["a"])
    for bad in ([], ["a", "a"], ["a,b"], [""], "cell"):
        with pytest.raises(ValueError, match="label"):
            check_labels(bad)
    with pytest.raises(StoreError, match="truncated"):
        decode_rle_counts("0a", 2, 2)  # 'a' says more groups follow
    assert decode_rle_counts(mask_to_rle(np.eye(4, dtype=bool))["counts"], 4, 4) == [0, 1, 4, 1, 4, 1, 4, 1]
    with pytest.raises(KeyError, match="no image named"):
        ImageFolder(images).get("../secret.txt")
    with pytest.raises(ValueError, match="thumbnail size"):
        ImageFolder(images).thumbnail("s0.png", 5)


def test_sam2_models_predict_and_have_no_everything_button(images, tmp_path):
    from sam2_oracle import SMALL_OVERRIDES

    from samforge.models.sam2 import build_sam2
    from samforge.predict.sam2_predictor import SAM2ImagePredictor

    torch.manual_seed(0)
    sam2 = build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    with page_client(create_app(sam2, images, tmp_path / "labels2", LABELS)) as client:
        assert client.get("/api/config").json()["everything"] is False
        r = predict(client, points=[{"x": 60, "y": 40, "label": 1}], box=[20, 10, 100, 70])
        predictor = SAM2ImagePredictor(sam2)
        predictor.set_image(np.asarray(Image.open(images / "s0.png").convert("RGB")))
        masks, scores, _ = predictor.predict(np.array([[60, 40]]), np.array([1]), np.array([20, 10, 100, 70]),
                                             multimask_output=False)
        assert (decode(r["mask"]) == (masks[0] > 0)).mean() > 0.999
        r = client.post("/api/images/s0.png/everything")
        assert r.status_code == 400 and "SAM v1" in r.json()["detail"]


# ------------------------------------------------------------------------------ cross-site requests
STATE_CHANGING = [("POST", "/api/images/s0.png/undo"), ("POST", "/api/images/s0.png/embed"),
                  ("POST", "/api/export"), ("PUT", "/api/images/s0.png/done"),
                  ("DELETE", "/api/images/s0.png/objects/1"), ("PATCH", "/api/images/s0.png/objects/1")]


@pytest.mark.parametrize("method, path", STATE_CHANGING)
def test_cross_origin_requests_without_the_token_are_refused(model, images, tmp_path, method, path):
    app = create_app(model, images, tmp_path / "labels", LABELS)
    with TestClient(app) as client:  # what another site's page can send: no token
        r = client.request(method, path, headers={"Origin": "http://evil.example", "Content-Type": "application/json"})
        assert r.status_code == 403 and "evil.example" in r.json()["detail"] and "testserver:80" in r.json()["detail"]
        r = client.request(method, path, headers={"Referer": "http://evil.example/page.html"})
        assert r.status_code == 403 and "Referer" in r.json()["detail"]
        r = client.request(method, path, headers={"Content-Type": "application/json"})  # no Origin, no token
        assert r.status_code == 403 and TOKEN_HEADER in r.json()["detail"]
        r = client.request(method, path, headers={TOKEN_HEADER: "guessed-" * 4, "Content-Type": "application/json"})
        assert r.status_code == 403 and TOKEN_HEADER in r.json()["detail"]
    assert not (tmp_path / "labels" / "export").exists()


def test_cross_origin_is_refused_even_with_the_token_and_same_origin_passes(client):
    token = client.headers[TOKEN_HEADER]
    for origin in ("http://evil.example", "http://testserver:8080", "https://testserver", "null"):
        r = client.post("/api/export", headers={"Origin": origin})
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"], origin
    assert client.post("/api/export", headers={"Origin": "http://testserver"}).status_code == 200
    assert client.post("/api/export", headers={"Referer": "http://testserver/"}).status_code == 200
    r = client.post("/api/images/s0.png/undo", headers={"Content-Type": "text/plain", TOKEN_HEADER: token})
    assert r.status_code == 415 and "got text/plain" in r.json()["detail"]  # a cross-site form's content type


def test_the_page_carries_a_per_server_token_and_its_script_sends_it(model, images, tmp_path):
    tokens = []
    for i in range(2):
        app = create_app(model, images, tmp_path / f"labels{i}", LABELS)
        with TestClient(app) as client:
            page = client.get("/").text
            assert f'<meta name="samforge-token" content="{app.state.token}">' in page
            tokens.append(app.state.token)
            assert TOKEN_HEADER in client.get("/static/app.js").text
    assert tokens[0] != tokens[1] and len(tokens[0]) >= 32


def test_cross_origin_post_on_a_real_server(live_server):
    host, port = live_server.sock.getsockname()[:2]
    for headers, status in (({"Origin": "http://evil.example"}, 403),
                            ({"Origin": f"http://127.0.0.1:{port}", "Content-Type": "application/json"}, 403),
                            ({"Origin": f"http://127.0.0.1:{port}", "Content-Type": "application/json",
                              TOKEN_HEADER: live_server.server.config.app.state.token}, 200)):
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.request("POST", "/api/export", headers=headers)
        assert conn.getresponse().status == status, headers
        conn.close()


def test_nul_in_a_labels_path_is_400(client):
    r = client.get("/labels/a%00b")
    assert r.status_code == 400 and "NUL" in r.json()["detail"]


def test_huge_rle_is_rejected_by_its_length_before_decoding(client):
    counts = "1" * (7 * 2**20)  # 7 MiB, under the body limit
    r = client.post("/api/images/s0.png/objects", json={"label": "cell", "segmentation": {"size": [96, 128],
                                                                                        "counts": counts}})
    assert r.status_code == 422
    assert f"{len(counts)} characters" in r.json()["detail"] and "96x128" in r.json()["detail"]
    with pytest.raises(StoreError, match="more than any mask of a 2x2 image"):
        decode_rle_counts("0" * 100, 2, 2)
    with pytest.raises(StoreError, match="negative run"):
        decode_rle_counts("000@", 2, 2)  # "@": a delta of -32, taking a count below zero
    with pytest.raises(StoreError, match="invalid character"):
        decode_rle_counts("0 ", 2, 2)
    with pytest.raises(StoreError, match="a run of 5 pixels, more than the 2x2 image has"):
        decode_rle_counts("5", 2, 2)


def test_vectorised_rle_decoding_matches_pycocotools():
    rng = np.random.default_rng(0)
    for i in range(60):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random() if i % 2 else np.pad(np.ones((h // 2, w // 2), bool),
                                                                       ((h - h // 2, 0), (w - w // 2, 0)))
        rle = mask_to_rle(mask)
        runs = decode_rle_counts(rle["counts"], h, w)
        flat = np.concatenate([[False], mask.flatten(order="F"), [not mask.flatten(order="F")[-1]]])
        expected = np.diff(np.flatnonzero(np.diff(flat.astype(np.int8)) != 0), prepend=0)
        assert runs == expected.tolist()[:len(runs)] and sum(runs) == h * w


def test_stale_store_temporaries_are_removed_and_live_ones_kept(model, images, tmp_path):
    import os
    import subprocess
    import sys

    ann = tmp_path / "labels" / "annotations"
    ann.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = ann / f".s0.json.tmp-{int(dead.stdout)}-0123abcd"
    live = ann / f".s0.json.tmp-{os.getppid()}-0123abcd"  # a process that runs (pytest's parent)
    other = ann / ".s0.json.tmp-someone-else"  # not our naming: never touched
    for p in (stale, live, other):
        p.write_bytes(b"{")
    store = AnnotationStore(tmp_path / "labels", ImageFolder(images), LABELS)
    assert store.removed_temporaries == [stale]
    assert not stale.exists() and live.exists() and other.exists()
