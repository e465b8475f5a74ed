"""The annotator's web application (FastAPI): the page, the images, prompts -> masks, saved objects,
"segment everything" proposals and the export.

``create_app(model, images_dir, labels_dir, labels=[...])`` returns the ASGI app; ``samforge.serve.server``
runs it with uvicorn. Endpoints (``{name}`` is an image's file name, looked up in the scanned list):

=======  =================================  ==========================================================
GET      /                                  the page (static/index.html; JS and CSS under /static/)
GET      /api/config                        labels, model, limits
GET      /api/images                        every image: name, size, done, number of objects
GET      /api/images/{name}/image           the image as the browser shows it
GET      /api/images/{name}/thumbnail       a small JPEG (``?size=`` 16..512)
POST     /api/images/{name}/embed           compute (or find cached) its embedding; prefetch the next one
POST     /api/images/{name}/predict         ``{"points": [{"x", "y", "label"}], "box": [x0, y0, x1, y1]}``
                                            -> the best mask (COCO RLE), its score and a ``mask_id``
POST     /api/images/{name}/everything      automatic mask proposals (SAM v1 models), each with a ``mask_id``
GET      /api/images/{name}/annotations     the saved objects
POST     /api/images/{name}/objects         accept a mask: ``{"label", "mask_id"}`` or ``{"label", "segmentation"}``
PATCH    /api/images/{name}/objects/{id}    ``{"label"}``: relabel an object
DELETE   /api/images/{name}/objects/{id}    delete an object
POST     /api/images/{name}/undo            undo the image's last object change
PUT      /api/images/{name}/done            ``{"done": true|false}``
POST     /api/export                        write LABELS_DIR/export (COCO JSON + label PNGs + images)
GET      /labels/{path}                     a file inside LABELS_DIR (e.g. export/annotations.json)
=======  =================================  ==========================================================

With ``engine=`` (``samforge engine annotate``) also the data engine's endpoints: proposals to accept or reject,
the retrain job and the model version (``samforge.serve.engine_routes``).

Errors come back as JSON ``{"detail": "<what was expected, what was given>"}``: 404 for a name or file
that is not served, 400 for a path that tries to leave its folder, 413 for a body over the size limit,
422 for malformed JSON or a request that does not fit the image. Requests that change anything (POST, PUT,
PATCH, DELETE) must come from the page itself: same Origin, the page's token in ``X-Samforge-Token``, a JSON
Content-Type (403 / 415 otherwise; see ``samforge.serve.guard``).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2Base
from samforge.predict.automatic_mask_generator import SamAutomaticMaskGenerator
from samforge.serve.embeddings import EmbeddingCache
from samforge.serve.engine_routes import add_engine_routes
from samforge.serve.engine_session import EngineSession
from samforge.serve.guard import SameOriginGuard, new_token
from samforge.serve.images import ImageFolder
from samforge.serve.store import AnnotationStore, StoreError, mask_to_rle

STATIC_DIR = Path(__file__).resolve().parent / "static"
TOKEN_PLACEHOLDER = "__SAMFORGE_TOKEN__"  # in static/index.html's <meta name="samforge-token">
DEFAULT_LABELS = ("object",)
MAX_POINTS = 64  # prompts per request: SAM was trained with far fewer
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_PENDING_MASKS = 512  # predicted / proposed masks kept for "accept" by mask_id
MAX_PROPOSALS = 256
DEFAULT_EVERYTHING = {"points_per_side": 16, "points_per_batch": 64, "pred_iou_thresh": 0.86,
                      "stability_score_thresh": 0.92}
Finite = Field(allow_inf_nan=False)


# ---------------------------------------------------------------------------------------- bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "yes" is not a bool, "3" not a number


class Point(_Body):
    x: float = Finite
    y: float = Finite
    label: Literal[0, 1] = 1  # 1 foreground (left click), 0 background (right / shift click)


class PredictRequest(_Body):
    points: list[Point] = Field(default_factory=list, max_length=MAX_POINTS)
    box: Optional[list[float]] = Field(default=None, min_length=4, max_length=4)  # x0, y0, x1, y1 in pixels
    multimask: Optional[bool] = None  # default: three candidates for a single click, one otherwise


class Rle(_Body):
    size: list[int] = Field(min_length=2, max_length=2)
    counts: str = Field(max_length=MAX_BODY_BYTES)


class ObjectIn(_Body):
    label: str = Field(min_length=1, max_length=64)
    mask_id: Optional[str] = Field(default=None, max_length=64)
    segmentation: Optional[Rle] = None
    score: Optional[float] = Field(default=None, allow_inf_nan=False)


class LabelIn(_Body):
    label: str = Field(min_length=1, max_length=64)


class DoneIn(_Body):
    done: bool


# ------------------------------------------------------------------------------------ middleware
class BodyLimit:
    """Refuse (413) request bodies over ``max_bytes``, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        detail = f"request body over the limit of {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, detail)
            return message

        await self.app(scope, limited, send)


def _readable(errors: list[dict]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        if e.get("type") == "model_attributes_type" and isinstance(e.get("input"), (bytes, str)):
            parts.append("the body must be a JSON object sent with Content-Type: application/json, got "
                         f"{str(e.get('input'))[:60]}")
        elif e.get("type") == "json_invalid":
            parts.append(f"malformed JSON at character {loc}: {e.get('ctx', {}).get('error', e.get('msg'))}")
        else:
            given = e.get("input")
            given = f" (given {str(given)[:60]!s})" if given is not None and not isinstance(given, dict) else ""
            parts.append(f"{loc}: {e.get('msg')}{given}")
    return "invalid request: " + "; ".join(parts[:8]) + (" ..." if len(parts) > 8 else "")


# ----------------------------------------------------------------------------------------- the app
class Annotator:
    """State behind the endpoints: the folder, the saved objects, the embedding cache, pending masks."""

    def __init__(self, model: Sam | SAM2Base, folder: ImageFolder, store: AnnotationStore, model_name: str,
                 cache_size: int, everything: dict | None, precision: str = "fp32") -> None:
        self.model, self.folder, self.store, self.model_name = model, folder, store, model_name
        self.precision = precision
        self.cache = EmbeddingCache(model, folder.read, capacity=cache_size, precision=precision)
        self.everything = everything  # generator settings, or None when not available
        self._masks: OrderedDict[str, dict] = OrderedDict()
        self._masks_lock = threading.Lock()
        self._everything_lock = threading.Lock()

    def swap_model(self, model: Sam | SAM2Base, model_name: str) -> None:
        """Use ``model`` from the next request on (the data engine's hot swap after a retrain): a fresh embedding
        cache, the old model's embeddings dropped. ``model`` must be of the same family (SAM or SAM 2)."""
        if not isinstance(model, (Sam, SAM2Base)) or isinstance(model, SAM2Base) != isinstance(self.model, SAM2Base):
            raise TypeError(f"the new model must be a {type(self.model).__name__} like the current one, got "
                            f"{type(model).__name__}")
        cache = EmbeddingCache(model, self.folder.read, capacity=self.cache.capacity, precision=self.precision)
        old = self.cache
        self.model, self.model_name, self.cache = model, model_name, cache
        old.close(wait=False)

    def remember(self, name: str, mask: np.ndarray, score: float, source: str, prompts: Any) -> dict:
        """Keep a proposed mask for a later accept; returns its public description."""
        rle = mask_to_rle(mask)
        mask_id = secrets.token_hex(8)
        with self._masks_lock:
            self._masks[mask_id] = {"name": name, "segmentation": rle, "score": score, "source": source,
                                    "prompts": prompts}
            while len(self._masks) > MAX_PENDING_MASKS:
                self._masks.popitem(last=False)
        ys, xs = np.nonzero(mask)
        bbox = [0, 0, 0, 0] if xs.size == 0 else [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                                   int(ys.max() - ys.min() + 1)]
        return {"mask_id": mask_id, "mask": rle, "score": score, "area": int(xs.size), "bbox": bbox}

    def recall(self, mask_id: str, name: str) -> dict:
        with self._masks_lock:
            m = self._masks.get(mask_id)
        if m is None or m["name"] != name:
            raise HTTPException(422, f"mask_id {mask_id!r} is not a mask predicted for {name} (masks are kept "
                                     f"for the last {MAX_PENDING_MASKS} predictions; predict again)")
        return m


def create_app(
    model: Sam | SAM2Base,
    images_dir: str | Path,
    labels_dir: str | Path,
    labels: list[str] | tuple[str, ...] = DEFAULT_LABELS,
    *,
    model_name: str = "",
    cache_size: int = 4,
    everything: dict | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    allowed_hosts: list[str] | None = None,
    precision: str = "fp32",
    engine: EngineSession | None = None,
) -> FastAPI:
    """The annotator app for the images of ``images_dir``, saving to ``labels_dir``.

    ``labels``: the label names offered (digits 1-9 pick the first nine). ``cache_size``: image
    embeddings kept in memory. ``everything``: settings of ``SamAutomaticMaskGenerator`` for the
    "segment everything" button (default ``DEFAULT_EVERYTHING``; SAM v1 models only). ``max_body_bytes``:
    the largest request body. ``allowed_hosts``: Host headers accepted (None: any), against DNS rebinding.
    ``precision``: of the image encoder, for clicks and "segment everything" (see ``SamPredictor``).
    ``engine``: the data engine's session (``samforge engine annotate``): its round's model is ``model``; adds the
    endpoints of ``samforge.serve.engine_routes`` (proposals, retrain, hot swap).
    """
    if not isinstance(model, (Sam, SAM2Base)):
        raise TypeError(f"model must be a samforge Sam or SAM2Base, got {type(model).__name__}")
    if not isinstance(max_body_bytes, int) or isinstance(max_body_bytes, bool) or max_body_bytes < 1024:
        raise ValueError(f"max_body_bytes must be an int >= 1024, got {max_body_bytes!r}")
    if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 1:
        raise ValueError(f"cache_size must be an int >= 1, got {cache_size!r}")
    if everything is not None and not isinstance(everything, dict):
        raise TypeError(f"everything must be a dict of SamAutomaticMaskGenerator settings, got "
                        f"{type(everything).__name__}")
    if allowed_hosts is not None and (not isinstance(allowed_hosts, (list, tuple))
                                      or not all(isinstance(h, str) for h in allowed_hosts)):
        raise TypeError(f"allowed_hosts must be a list of host names or None, got {allowed_hosts!r}")
    folder = ImageFolder(images_dir)
    store = AnnotationStore(labels_dir, folder, list(labels))
    settings = {**DEFAULT_EVERYTHING, "precision": precision, **(everything or {})} if isinstance(model, Sam) else None
    state = Annotator(model, folder, store, model_name or type(model).__name__, cache_size, settings, precision)
    if engine is not None:
        if not isinstance(engine, EngineSession):
            raise TypeError(f"engine must be an EngineSession or None, got {type(engine).__name__}")
        engine.attach(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.cache.close()

    app = FastAPI(title="samforge annotate", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.annotator = state
    app.state.token = new_token()  # the page carries it; state-changing requests must send it back
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8").replace(TOKEN_PLACEHOLDER, app.state.token)
    app.add_middleware(SameOriginGuard, token=app.state.token)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"detail": _readable(exc.errors()), "errors": errors}, status_code=422)

    def entry(name: str):
        try:
            return folder.get(name)
        except KeyError:
            raise HTTPException(404, f"no image named {name!r} in IMAGES_DIR") from None

    def store_call(fn, *args):
        try:
            return fn(*args)
        except KeyError as e:
            raise HTTPException(404, e.args[0] if e.args else str(e)) from None
        except (StoreError, ValueError, TypeError) as e:
            raise HTTPException(422, str(e)) from None

    # -------------------------------------------------------------------------------- page, files
    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/labels/{path:path}")
    def labels_file(path: str) -> FileResponse:
        parts = path.replace("\\", "/").split("/")
        if path.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise HTTPException(400, f"path must stay inside LABELS_DIR, got {path!r}")
        if "\x00" in path:
            raise HTTPException(400, f"path must be a file name without NUL characters, got {path!r}")
        target = (store.root / path).resolve()
        if (not target.is_relative_to(store.root) or not target.is_file()
                or any(p.startswith(".") for p in target.relative_to(store.root).parts)):
            raise HTTPException(404, f"no file {path!r} in LABELS_DIR")
        return FileResponse(target)

    @app.get("/api/config")
    def config() -> dict:
        return {"labels": store.labels, "model": state.model_name, "images": len(folder),
                "images_dir": str(folder.root), "labels_dir": str(store.root), "max_points": MAX_POINTS,
                "everything": state.everything is not None,
                "engine": None if engine is None else engine.describe()}

    @app.get("/api/images")
    def images() -> dict:
        cached = set(state.cache.cached())
        return {"images": [{"name": e.name, "width": e.width, "height": e.height, **store_call(store.summary, e.name),
                            "embedded": e.name in cached} for e in folder.entries],
                "skipped": [{"name": n, "why": why} for n, why in folder.skipped]}

    @app.get("/api/images/{name}/image")
    def image(name: str) -> Response:
        entry(name)
        data, media = folder.display_bytes(name)
        if isinstance(data, Path):
            return FileResponse(data, media_type=media)
        return Response(data, media_type=media)

    @app.get("/api/images/{name}/thumbnail")
    def thumbnail(name: str, size: int = Query(128, ge=16, le=512)) -> Response:
        entry(name)
        return Response(folder.thumbnail(name, size), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    # ------------------------------------------------------------------------------------- model
    @app.post("/api/images/{name}/embed")
    def embed(name: str) -> dict:
        entry(name)
        was_cached = name in state.cache
        start = time.perf_counter()
        state.cache.get(name)
        state.cache.prefetch(folder.neighbour(name, 1))
        return {"name": name, "cached": was_cached, "seconds": time.perf_counter() - start,
                "embedding_seconds": state.cache.seconds.get(name)}

    @app.post("/api/images/{name}/predict")
    def predict(name: str, req: PredictRequest) -> dict:
        e = entry(name)
        if not req.points and req.box is None:
            raise HTTPException(422, "give at least one point or a box")
        for i, p in enumerate(req.points):
            if not (0 <= p.x <= e.width and 0 <= p.y <= e.height):
                raise HTTPException(422, f"points[{i}] ({p.x:g}, {p.y:g}) is outside the image "
                                         f"(0..{e.width} x 0..{e.height})")
        box = None
        if req.box is not None:
            x0, y0, x1, y1 = req.box
            if not all(math.isfinite(v) for v in req.box) or not (0 <= x0 < x1 <= e.width and 0 <= y0 < y1 <= e.height):
                raise HTTPException(422, f"box must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= {e.width} and "
                                         f"0 <= y0 < y1 <= {e.height}, got {list(req.box)}")
            box = np.array(req.box, dtype=np.float64)
        coords = np.array([[p.x, p.y] for p in req.points], dtype=np.float64) if req.points else None
        point_labels = np.array([p.label for p in req.points], dtype=np.int64) if req.points else None
        multimask = req.multimask if req.multimask is not None else (len(req.points) == 1 and box is None)
        predictor = state.cache.get(name)
        start = time.perf_counter()
        masks, scores, _ = predictor.predict(coords, point_labels, box, multimask_output=multimask)
        best = int(np.argmax(scores))
        mask = np.asarray(masks[best]) > 0  # SAM 2 gives float 0/1 masks
        model_ms = (time.perf_counter() - start) * 1000
        prompts = {"points": [p.model_dump() for p in req.points], "box": None if box is None else list(req.box)}
        out = state.remember(name, mask, float(scores[best]), "box" if box is not None and not req.points
                             else "click", prompts)
        out["ms"] = model_ms
        out["total_ms"] = (time.perf_counter() - start) * 1000
        return out

    @app.post("/api/images/{name}/everything")
    def everything_(name: str) -> dict:
        entry(name)
        if state.everything is None:
            raise HTTPException(400, "segment everything needs a SAM v1 model (vit_h, vit_l, vit_b, vit_small)")
        start = time.perf_counter()
        with state._everything_lock:  # one at a time: it keeps the CPU busy
            generator = SamAutomaticMaskGenerator(state.model, output_mode="binary_mask", **state.everything)
            records = generator.generate(folder.read(name))
        records.sort(key=lambda r: -float(r["predicted_iou"]))
        proposals = [state.remember(name, np.asarray(r["segmentation"], dtype=bool), float(r["predicted_iou"]),
                                    "everything", None) for r in records[:MAX_PROPOSALS]]
        return {"proposals": proposals, "seconds": time.perf_counter() - start, "found": len(records)}

    # ----------------------------------------------------------------------------------- objects
    @app.get("/api/images/{name}/annotations")
    def annotations(name: str) -> dict:
        entry(name)
        return store_call(store.get, name)

    @app.post("/api/images/{name}/objects")
    def add_object(name: str, req: ObjectIn) -> dict:
        entry(name)
        if (req.mask_id is None) == (req.segmentation is None):
            raise HTTPException(422, "give exactly one of mask_id (from predict or everything) and segmentation "
                                     "(a COCO RLE)")
        if req.mask_id is not None:
            m = state.recall(req.mask_id, name)
            obj = store_call(store.add_object, name, m["segmentation"], req.label,
                             m["score"] if req.score is None else req.score, m["source"], m["prompts"])
        else:
            obj = store_call(store.add_object, name, req.segmentation.model_dump(), req.label, req.score, "api")
        return {"object": obj, **store_call(store.summary, name)}

    @app.patch("/api/images/{name}/objects/{object_id}")
    def relabel(name: str, object_id: int, req: LabelIn) -> dict:
        entry(name)
        return {"object": store_call(store.set_label, name, object_id, req.label)}

    @app.delete("/api/images/{name}/objects/{object_id}")
    def delete(name: str, object_id: int) -> dict:
        entry(name)
        store_call(store.delete_object, name, object_id)
        return store_call(store.get, name)

    @app.post("/api/images/{name}/undo")
    def undo(name: str) -> dict:
        entry(name)
        try:
            return store.undo(name)
        except StoreError as e:
            raise HTTPException(409, str(e)) from None

    @app.put("/api/images/{name}/done")
    def done(name: str, req: DoneIn) -> dict:
        entry(name)
        return store_call(store.set_done, name, req.done)

    @app.post("/api/export")
    def export() -> dict:
        result = store_call(store.export)
        result["url"] = "/labels/export/annotations.json"
        return result

    if engine is not None:
        add_engine_routes(app, engine, entry, store_call)

    return app
