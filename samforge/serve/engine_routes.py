"""The annotator's data-engine endpoints (present when ``create_app`` is given an
:class:`~samforge.serve.engine_session.EngineSession`):

=======  =============================================  ===================================================
GET      /api/engine                                    round (the model version), stage, retrain status;
                                                        switches to a newer round another process wrote
POST     /api/engine/retrain                            ``{"mode"?, "steps"?}``: start a retrain (202);
                                                        409 while one runs
GET      /api/engine/retrain                            the retrain's status (state, message, progress, error)
POST     /api/images/{name}/proposals                   the current round's proposals still to decide
                                                        (computed on first request, then cached in WORK)
POST     /api/images/{name}/proposals/{id}/accept       ``{"label"}``: save it as an object (409 if it now
                                                        overlaps an accepted object by IoU > 0.5)
POST     /api/images/{name}/proposals/{id}/reject       ``{}``: never show it again
POST     /api/images/{name}/proposals/accept-all        ``{"label"}``: accept every proposal still shown
=======  =============================================  ===================================================

Every POST goes through the app's Origin / token / JSON guard (``samforge.serve.guard``) like the others.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Literal, Optional

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from samforge.engine.retrain_job import RetrainBusy
from samforge.serve.engine_session import EngineSession
from samforge.serve.proposals import overlapping

MAX_STEPS = 100_000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RetrainIn(_Body):
    mode: Optional[Literal["decoder", "lora", "full"]] = None  # samforge.engine.retrain_job.MODES
    steps: Optional[int] = Field(default=None, ge=1, le=MAX_STEPS)


class ProposalLabel(_Body):
    label: str = Field(min_length=1, max_length=64)


class NoBody(_Body):
    pass


def add_engine_routes(app: FastAPI, session: EngineSession, entry: Callable[[str], Any],
                      store_call: Callable[..., Any]) -> None:
    """Register the endpoints of the module docstring on ``app``. ``entry(name)`` checks an image name (404);
    ``store_call(fn, *args)`` maps the store's errors to 404 / 422."""
    if not isinstance(session, EngineSession) or session.annotator is None:
        raise TypeError("session must be an EngineSession attached to the app's annotator")
    state = session.annotator
    store, proposals, job = state.store, session.proposals, session.job

    @app.get("/api/engine")
    def engine_status() -> dict:
        session.refresh()
        return {**session.describe(), "model": state.model_name}

    @app.get("/api/engine/retrain")
    def retrain_status() -> dict:
        return job.status()

    @app.post("/api/engine/retrain", status_code=202)
    def retrain(req: RetrainIn) -> Any:
        changes = {k: v for k, v in (("mode", req.mode), ("steps", req.steps)) if v is not None}
        try:
            return job.start(replace(session.retrain_defaults, **changes))
        except RetrainBusy as e:
            return JSONResponse({"detail": str(e), "retrain": job.status()}, status_code=409)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

    def shown(name: str, found: list[dict]) -> list[dict]:
        objects = [o["segmentation"] for o in store_call(store.get, name)["objects"]]
        return proposals.shown(found, objects, proposals.rejected(name))

    @app.post("/api/images/{name}/proposals")
    def list_proposals(name: str, req: Optional[NoBody] = None) -> dict:
        entry(name)
        if session.stage != "semi":
            raise HTTPException(400, f"proposals belong to the semi-automatic stage; this annotator runs the "
                                     f"{session.stage} stage (samforge engine annotate --stage semi)")
        start = time.perf_counter()
        round_index, model = session.round, state.model  # one consistent pair, even if a swap happens meanwhile
        found, cached = proposals.compute(round_index, name, model)
        kept = shown(name, found)
        return {"round": round_index, "cached": cached, "seconds": time.perf_counter() - start,
                "computed": len(found), "proposals": [_public(p) for p in kept]}

    def accept_one(name: str, proposal_id: str, label: str) -> dict:
        try:
            p = proposals.get(name, proposal_id)
        except KeyError as e:
            raise HTTPException(404, e.args[0]) from None
        with session.accept_lock:
            objects = store_call(store.get, name)["objects"]
            hit = overlapping(p["segmentation"], objects)
            if hit is not None:
                raise HTTPException(409, f"proposal {proposal_id} overlaps the accepted object #{hit['id']} by IoU > "
                                         "0.5: a proposal never replaces an accepted object")
            prompts = {"proposal": proposal_id, "stability_score": p["stability_score"]}
            return store_call(store.add_object, name, p["segmentation"], label, p["predicted_iou"], "proposal",
                              prompts)

    @app.post("/api/images/{name}/proposals/accept-all")
    def accept_all(name: str, req: ProposalLabel) -> dict:
        entry(name)
        store_call(store.check_label, req.label)
        found = proposals.cached(session.round, name) or []
        accepted, skipped = [], []
        for p in shown(name, found):
            try:
                accepted.append(accept_one(name, p["id"], req.label))
            except HTTPException as e:
                if e.status_code != 409:
                    raise
                skipped.append({"id": p["id"], "why": e.detail})  # overlaps one accepted just before
        return {"accepted": accepted, "skipped": skipped, **store_call(store.summary, name)}

    @app.post("/api/images/{name}/proposals/{proposal_id}/accept")
    def accept(name: str, proposal_id: str, req: ProposalLabel) -> dict:
        entry(name)
        return {"object": accept_one(name, proposal_id, req.label), **store_call(store.summary, name)}

    @app.post("/api/images/{name}/proposals/{proposal_id}/reject")
    def reject(name: str, proposal_id: str, req: Optional[NoBody] = None) -> dict:
        entry(name)
        try:
            proposals.reject(name, proposal_id)
        except KeyError as e:
            raise HTTPException(404, e.args[0]) from None
        return {"rejected": proposal_id}


def _public(p: dict) -> dict:
    """A proposal as the page draws it."""
    return {"id": p["id"], "mask": p["segmentation"], "score": p["predicted_iou"],
            "stability_score": p["stability_score"], "area": p["area"], "bbox": p["bbox"]}
