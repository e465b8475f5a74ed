"""``samforge annotate`` end to end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
the real server on a free 127.0.0.1 port, the real page; click an object, see the mask drawn (pixels of a
screenshot), accept it with a label, export, and read the export back with our dataset readers.

Not skipped when Chromium or Playwright is missing: the tests fail saying how to install them (`make test`
installs both)."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from samforge.data.readers import CocoDataset, MaskFolderDataset, open_dataset
from samforge.data.synthetic import make_scene
from samforge.models.build import build_sam
from samforge.predict.predictor import SamPredictor
from samforge.serve import ServerThread, create_app

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HW = (192, 256)
LABELS = ["cell", "nucleus"]
MASK_RGB = np.array([30, 144, 255])  # the page's colour for the current mask (static/app.js MASK_COLOR)
TIMEOUT_MS = 60_000


def chromium_and_playwright():
    """Playwright's sync API and the Chromium path, or a failure that says how to get them."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install playwright (`make test` installs it with "
                    "the test extra)", pytrace=False)
    exe = shutil.which("chromium") or (str(CHROMIUM) if CHROMIUM.exists() else None)
    if exe is None:
        pytest.fail("the browser tests need Chromium at /usr/bin/chromium: apt-get install -y chromium "
                    "(`make test` installs it where apt-get is available)", pytrace=False)
    return sync_playwright, exe


def click_point(scene) -> tuple[int, int]:
    """A pixel well inside the scene's largest object: (x, y)."""
    obj = scene.masks[int(np.argmax(scene.masks.sum(axis=(1, 2))))]
    ys, xs = np.nonzero(obj)
    d = (ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2
    i = int(np.argmin(d))
    return int(xs[i]), int(ys[i])


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(s, image_size=HW) for s in (3, 4)]


@pytest.fixture(scope="module")
def model(scenes):
    """A random vit_small whose mask at the click is clearly visible: 3% to 70% of the image (random weights
    can give an empty or a full mask; the first seed that does not, in a fixed order, is used)."""
    x, y = click_point(scenes[0])
    for seed in range(20):
        torch.manual_seed(seed)
        sam = build_sam("vit_small").eval()
        predictor = SamPredictor(sam)
        predictor.set_image(scenes[0].image)
        masks, scores, _ = predictor.predict(np.array([[x + 0.5, y + 0.5]]), np.array([1]))
        if 0.03 < masks[int(np.argmax(scores))].mean() < 0.7:
            return sam
    pytest.fail("no seed in 0..19 gives a vit_small with a visible mask at the click")


@pytest.fixture()
def served(model, scenes, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, sc in enumerate(scenes):
        Image.fromarray(sc.image).save(images / f"s{i}.png")
    app = create_app(model, images, tmp_path / "labels", LABELS, model_name="vit_small (random)",
                     everything={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    server = ServerThread(app)
    server.start()
    yield server.url, images, tmp_path / "labels"
    server.stop()


@pytest.fixture()
def page(served):
    sync_playwright, exe = chromium_and_playwright()
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=exe, headless=True,
                                                       args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 760})
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(served[0])
        page.wait_for_function("document.body.dataset.embedState === 'ready'")
        yield page
        assert not errors, f"JavaScript errors on the page: {errors}"
        context.close()


def shot(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator("#overlay").screenshot())).convert("RGB")).astype(int)


def page_xy(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y)'s centre."""
    box = page.locator("#overlay").bounding_box()
    return box["x"] + (x + 0.5) * box["width"] / HW[1], box["y"] + (y + 0.5) * box["height"] / HW[0]


def saved(labels: Path, stem: str = "s0") -> dict:
    return json.loads((labels / "annotations" / f"{stem}.json").read_text())


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)) > 0


def test_click_shows_mask_accept_and_export(page, served, scenes):
    url, images, labels = served
    before = shot(page)
    x, y = click_point(scenes[0])
    page.mouse.click(*page_xy(page, x, y))
    page.wait_for_function("document.body.dataset.maskState === 'shown'")
    after = shot(page)

    page.keyboard.press("2")  # label "nucleus"
    page.keyboard.press("a")  # accept
    page.wait_for_function("document.body.dataset.objects === '1'")
    obj = saved(labels)["objects"][0]
    assert obj["label"] == "nucleus" and obj["source"] == "click"
    assert obj["area"] == int(page.evaluate("document.body.dataset.maskArea"))
    mask = decode(obj["segmentation"])
    assert 0.03 < mask.mean() < 0.7

    # the screenshot: the mask's pixels turned towards the mask colour, the others did not change
    expected = resized(mask, after.shape[:2])
    changed = np.abs(after - before).sum(axis=2) > 30
    iou = (changed & expected).sum() / (changed | expected).sum()
    assert iou > 0.9, f"pixels changed by the click vs the mask: IoU {iou:.3f}"
    alpha = 150 / 255
    blend = before * (1 - alpha) + MASK_RGB * alpha
    inside = expected & ~np.roll(~expected, 2, axis=0) & ~np.roll(~expected, -2, axis=1)  # away from the edges
    assert inside.sum() > 100
    assert np.abs(after[inside] - blend[inside]).mean() < 12, "the mask is not drawn in the mask colour"
    assert (after[inside, 2] - after[inside, 0]).mean() > (before[inside, 2] - before[inside, 0]).mean() + 40

    page.keyboard.press("e")  # export
    page.wait_for_function("document.body.dataset.exportState === 'done'")
    assert "exported 1 objects on 1 images" in page.inner_text("#status")
    folder = open_dataset(labels / "export")
    coco = open_dataset(labels / "export" / "annotations.json")
    assert isinstance(folder, MaskFolderDataset) and isinstance(coco, CocoDataset)
    for ds in (folder, coco):
        assert len(ds) == 1 and Path(ds[0].name).name == "s0.png"
        assert np.array_equal(ds[0].image, scenes[0].image) and np.array_equal(ds[0].masks, mask[None])
    categories = json.loads((labels / "export" / "annotations.json").read_text())["categories"]
    assert [c["name"] for c in categories] == LABELS
    thumb = page.locator(".thumb.current .badge")
    assert thumb.inner_text().strip() == "1"


def test_negative_points_box_undo_navigation_and_everything(page, served, scenes):
    url, images, labels = served
    assert page.locator(".thumb").count() == 2
    x, y = click_point(scenes[0])
    page.mouse.click(*page_xy(page, x, y), button="right")  # a background point
    page.wait_for_function("document.body.dataset.maskState === 'shown'")
    assert page.evaluate("S.points.map(p => p.label)") == [0]
    page.keyboard.down("Shift")
    page.mouse.click(*page_xy(page, 10, 10))  # shift+click: another background point
    page.keyboard.up("Shift")
    page.wait_for_function("S.points.length === 2 && document.body.dataset.maskState === 'shown'")
    assert page.evaluate("S.points.map(p => p.label)") == [0, 0]
    page.keyboard.press("Escape")
    assert page.evaluate("document.body.dataset.maskState") == "none" and page.evaluate("S.points.length") == 0

    page.mouse.move(*page_xy(page, 40, 30))  # drag: a box
    page.mouse.down()
    page.mouse.move(*page_xy(page, 120, 90), steps=5)
    page.mouse.move(*page_xy(page, 200, 150), steps=5)
    page.mouse.up()
    page.wait_for_function("document.body.dataset.maskState === 'shown'")
    box = page.evaluate("S.box")
    assert box[0] == pytest.approx(40.5, abs=1) and box[3] == pytest.approx(150.5, abs=1)
    assert page.evaluate("S.points.length") == 0
    page.keyboard.press("a")
    page.wait_for_function("document.body.dataset.objects === '1'")
    assert saved(labels)["objects"][0]["source"] == "box"
    assert saved(labels)["objects"][0]["prompts"]["box"] == pytest.approx(box)
    page.keyboard.press("z")  # no prompts left: undoes the accept on the server
    page.wait_for_function("S.objects.length === 0")
    assert saved(labels)["objects"] == []

    page.keyboard.press("d")  # done
    page.wait_for_function("document.querySelector('.thumb.current .badge').textContent.startsWith('✓')")
    assert saved(labels)["done"] is True
    page.keyboard.press("n")  # next image
    page.wait_for_function("document.body.dataset.embedState === 'ready' && S.name === 's1.png'")
    assert "s1.png (2/2)" in page.inner_text("#image-name")
    page.keyboard.press("s")  # segment everything: proposals to accept or reject
    page.wait_for_function("S.proposals.length > 0")
    n = page.evaluate("S.proposals.length")
    page.locator("#proposals li").first.locator("button", has_text="✓").click()
    page.wait_for_function(f"S.objects.length === 1 && S.proposals.length === {n - 1}")
    assert saved(labels, "s1")["objects"][0]["source"] == "everything"
    page.locator("#objects li button.delete").click()
    page.wait_for_function("S.objects.length === 0")
    assert saved(labels, "s1")["objects"] == []
    page.keyboard.press("p")
    page.wait_for_function("document.body.dataset.embedState === 'ready' && S.name === 's0.png'")
