"""Click-to-mask latency of ``samforge annotate``: the real server (uvicorn on 127.0.0.1), one image
whose embedding is ready, then single clicks POSTed to ``/api/images/{name}/predict`` as the page does.

    .venv/bin/python benchmarks/annotate_latency.py [--model vit_b] [--size 1024x768] [--clicks 30] [--official]
    .venv/bin/python benchmarks/annotate_latency.py --model vit_small --checkpoint runs/x/checkpoints/best.pt \
        --screenshot benchmarks/figures/annotator.png      # also a picture of the page with a mask

Prints the embedding time, then per click: ``model`` (SamPredictor.predict inside the server), ``round trip``
(HTTP request to JSON reply with the mask as COCO RLE, what the page waits for before drawing), medians and
90th percentiles. ``--official`` also times the official ``segment_anything`` predictor's ``predict`` on the
same weights, image and points, interleaved (the floor a server around it could reach).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from samforge.data.synthetic import make_scene  # noqa: E402
from samforge.models.build import build_sam, load_sam  # noqa: E402
from samforge.serve import ServerThread, create_app  # noqa: E402
from samforge.serve.guard import TOKEN_HEADER  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


HEADERS = {"Content-Type": "application/json"}  # and the server's token (X-Samforge-Token), set once it runs


def post(conn: http.client.HTTPConnection, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body or {}).encode()
    conn.request("POST", path, body=data, headers=HEADERS)
    resp = conn.getresponse()
    reply = json.loads(resp.read())
    if resp.status != 200:
        raise RuntimeError(f"{path}: {resp.status} {reply}")
    return reply


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def screenshot(url: str, scene, path: Path, label_key: str = "1") -> None:
    """Open the page, click the largest object, accept it, click another, save a picture of the page."""
    from playwright.sync_api import sync_playwright

    sizes = scene.masks.sum(axis=(1, 2))
    order = np.argsort(-sizes)
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1100, "height": 640})
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.wait_for_function("document.body.dataset.embedState === 'ready'")
        box = page.locator("#overlay").bounding_box()
        h, w = scene.masks.shape[1:]
        for n, k in enumerate(order[:2]):
            ys, xs = np.nonzero(scene.masks[k])
            i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
            page.mouse.click(box["x"] + (xs[i] + 0.5) * box["width"] / w, box["y"] + (ys[i] + 0.5) * box["height"] / h)
            page.wait_for_function("document.body.dataset.maskState === 'shown'")
            if n == 0:
                page.keyboard.press(label_key)
                page.keyboard.press("a")
                page.wait_for_function("document.body.dataset.objects === '1'")
        path.parent.mkdir(parents=True, exist_ok=True)
        png = page.screenshot()
        ctx.close()
    with Image.open(__import__("io").BytesIO(png)) as im:  # a palette PNG: small enough to commit
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--checkpoint", default=None, help="weights (default: random, seed 0)")
    parser.add_argument("--size", default="1024x768", help="image WxH (default 1024x768)")
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--official", action="store_true", help="also time segment_anything's predict")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a picture of the page with a mask")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    model = load_sam(args.checkpoint, args.model) if args.checkpoint else build_sam(args.model)
    model.eval()
    scene = make_scene(7, image_size=(h, w))

    official = None
    if args.official:  # set up first: the server's keep-alive would close an idle connection meanwhile
        from conftest import official_sam
        from segment_anything import SamPredictor as OfficialPredictor

        from samforge.models.configs import SAM_CONFIGS

        off = official_sam(SAM_CONFIGS[args.model])
        off.load_state_dict(model.state_dict())
        official = OfficialPredictor(off)
        start = time.perf_counter()
        official.set_image(scene.image)
        print(f"official set_image: {time.perf_counter() - start:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        Image.fromarray(scene.image).save(images / "scene.png")
        app = create_app(model, images, Path(tmp) / "labels", ["object", "background thing"],
                         model_name=f"{args.model}" + (" (random weights)" if not args.checkpoint else ""))
        HEADERS[TOKEN_HEADER] = app.state.token  # what the page sends with every change
        server = ServerThread(app)
        url = server.start()
        host, port = server.sock.getsockname()[:2]
        conn = http.client.HTTPConnection(host, port, timeout=600)
        start = time.perf_counter()
        post(conn, "/api/images/scene.png/embed")
        print(f"{args.model} on {w}x{h}, torch {torch.__version__}, {torch.get_num_threads()} threads: "
              f"embedding {time.perf_counter() - start:.2f} s")

        rng = np.random.default_rng(0)
        points = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(args.clicks + 3)]
        model_ms, trip_ms, official_ms = [], [], []
        for i, (x, y) in enumerate(points):
            t = time.perf_counter()
            reply = post(conn, "/api/images/scene.png/predict", {"points": [{"x": x, "y": y, "label": 1}]})
            trip = (time.perf_counter() - t) * 1000
            if official is not None:
                t = time.perf_counter()
                official.predict(np.array([[x, y]]), np.array([1]))
                off_ms = (time.perf_counter() - t) * 1000
            if i >= 3:  # warm-up
                model_ms.append(reply["ms"])
                trip_ms.append(trip)
                if official is not None:
                    official_ms.append(off_ms)
        conn.close()
        print(f"{args.clicks} single clicks after the embedding is ready:")
        print(f"  model (predict in the server): median {statistics.median(model_ms):6.1f} ms, "
              f"p90 {pct(model_ms, 90):6.1f} ms")
        print(f"  round trip (HTTP, mask as RLE): median {statistics.median(trip_ms):6.1f} ms, "
              f"p90 {pct(trip_ms, 90):6.1f} ms   (target ~150 ms)")
        if official_ms:
            print(f"  official SamPredictor.predict:  median {statistics.median(official_ms):6.1f} ms; "
                  f"round trip / official = {statistics.median(trip_ms) / statistics.median(official_ms):.2f}")
        if args.screenshot is not None:
            screenshot(url, scene, args.screenshot)
        server.stop()


if __name__ == "__main__":
    main()
