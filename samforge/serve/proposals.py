"""The semi-automatic stage's proposals in the annotator: the model's confident automatic masks for an image,
computed once per image and model round and kept in the work folder, shown minus what the person already decided.

``WORK/proposals/round-<N>/<image stem>.json`` holds round N's proposals of an image (its automatic masks that
pass the strict filter of :func:`samforge.engine.proposals.filter_proposals`, as COCO RLE with their predicted IoU
and stability score), written atomically when first asked for, so reopening the image is instant.
``WORK/proposals/rejected/<image stem>.json`` holds the masks the person rejected (under any round). The proposals
shown are the cached ones minus those overlapping an accepted object or a rejected mask by IoU > 0.5: a proposal
never overwrites an accepted object, and a rejected one does not come back after a retrain.

A proposal's id is ``"<round>-<k>"``: it still names the same mask after the model changed.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from samforge.engine.proposals import (OVERLAP_IOU_THRESH, PRED_IOU_THRESH, STABILITY_SCORE_THRESH, filter_proposals,
                                       proposal_filters)
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2Base
from samforge.predict.amg_outputs import segmentation_to_coco_rle
from samforge.predict.automatic_mask_generator import SamAutomaticMaskGenerator
from samforge.predict.sam2_automatic_mask_generator import SAM2AutomaticMaskGenerator
from samforge.serve.images import ImageFolder
from samforge.utils.atomic import atomic_write_bytes, remove_stale_temporaries

PROPOSALS_DIR = "proposals"
REJECTED = "rejected"
MAX_PROPOSALS = 256
ProposalSource = Callable[[Sam | SAM2Base, np.ndarray], Sequence[dict]]  # (model, HxWx3 image) -> AMG records
_ID = re.compile(r"(\d{1,6})-(\d{1,6})")
STRICT_FILTERS = proposal_filters()  # what a cache file without "filters" was made under


def strict_source(points_per_side: int = 16, precision: str = "fp32", *, pred_iou_thresh: float = PRED_IOU_THRESH,
                  stability_score_thresh: float = STABILITY_SCORE_THRESH) -> ProposalSource:
    """The default source: ``SamAutomaticMaskGenerator`` / ``SAM2AutomaticMaskGenerator`` on a
    ``points_per_side`` grid with the strict thresholds (predicted IoU >= 0.9, stability >= 0.95; the proposals
    shown pass them whatever the generator's, see :meth:`ProposalStore.compute`)."""
    if not isinstance(points_per_side, int) or isinstance(points_per_side, bool) or points_per_side < 1:
        raise ValueError(f"points_per_side must be an int >= 1, got {points_per_side!r}")

    def source(model: Sam | SAM2Base, image: np.ndarray) -> Sequence[dict]:
        make = SAM2AutomaticMaskGenerator if isinstance(model, SAM2Base) else SamAutomaticMaskGenerator
        generator = make(model, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                         stability_score_thresh=stability_score_thresh, output_mode="coco_rle", precision=precision)
        return generator.generate(image)

    return source


class ProposalStore:
    """Proposals per image and round under ``work`` (see the module docstring), made by ``source``."""

    def __init__(self, work: str | Path, folder: ImageFolder, source: ProposalSource, *,
                 pred_iou_thresh: float = PRED_IOU_THRESH,
                 stability_score_thresh: float = STABILITY_SCORE_THRESH) -> None:
        if not isinstance(folder, ImageFolder):
            raise TypeError(f"folder must be an ImageFolder, got {type(folder).__name__}")
        if not callable(source):
            raise TypeError(f"source must be a callable (model, image) -> automatic-mask records, got "
                            f"{type(source).__name__}")
        self.root = Path(work) / PROPOSALS_DIR
        (self.root / REJECTED).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries([self.root / REJECTED])
        self.folder, self.source = folder, source
        # the filter every proposal shown passes (strict by default); proposals cached under another are made again
        self.filters = proposal_filters(pred_iou_thresh, stability_score_thresh)
        self._compute_lock = threading.Lock()  # one generation at a time: it keeps the CPU busy
        self._rejected_lock = threading.Lock()

    def _path(self, round_index: int, name: str) -> Path:
        return self.root / f"round-{round_index}" / f"{self.folder.get(name).stem}.json"

    def _rejected_path(self, name: str) -> Path:
        return self.root / REJECTED / f"{self.folder.get(name).stem}.json"

    def _read(self, path: Path, filters: dict | None = None) -> list[dict] | None:
        """The proposals of the file at ``path``; None when there is none, it is damaged, or (``filters`` given) it was
        made under other filters (a file without them was made under the strict ones)."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None  # damaged: computed again
        if not isinstance(data, dict) or not isinstance(data.get("proposals"), list):
            return None
        if filters is not None and data.get("filters", STRICT_FILTERS) != filters:
            return None  # made under other thresholds: computed again
        return data["proposals"]

    def cached(self, round_index: int, name: str) -> list[dict] | None:
        """Round ``round_index``'s proposals of ``name`` if they were computed under this store's filters, else
        None."""
        return self._read(self._path(round_index, name), self.filters)

    def compute(self, round_index: int, name: str, model: Sam | SAM2Base) -> tuple[list[dict], bool]:
        """(round ``round_index``'s proposals of image ``name``, whether they came from the cache), made with
        ``model`` (that round's) when not cached."""
        found = self.cached(round_index, name)
        if found is not None:
            return found, True
        with self._compute_lock:
            found = self.cached(round_index, name)
            if found is not None:
                return found, True
            records = filter_proposals(list(self.source(model, self.folder.read(name))), **self.filters)
            records.sort(key=lambda r: -float(r["predicted_iou"]))
            proposals = [_entry(round_index, k, r) for k, r in enumerate(records[:MAX_PROPOSALS])]
            path = self._path(round_index, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            doc = {"round": round_index, "image": name, "created": time.time(), "filters": self.filters,
                   "proposals": proposals}
            atomic_write_bytes(path, json.dumps(doc).encode())
            return proposals, False

    def get(self, name: str, proposal_id: str) -> dict:
        """The proposal ``proposal_id`` (``"<round>-<k>"``) of image ``name``; ``KeyError`` when there is none."""
        m = _ID.fullmatch(proposal_id) if isinstance(proposal_id, str) else None
        found = self.cached(int(m[1]), name) if m else None
        k = int(m[2]) if m else -1
        if found is None or not 0 <= k < len(found):
            raise KeyError(f"{name} has no proposal {proposal_id!r} (ids are <round>-<index> of computed proposals)")
        return found[k]

    def rejected(self, name: str) -> list[dict]:
        """The masks (COCO RLE) the person rejected on image ``name``."""
        return self._read(self._rejected_path(name)) or []

    def reject(self, name: str, proposal_id: str) -> dict:
        """Remember proposal ``proposal_id`` of ``name`` as rejected (it is not shown again); returns it."""
        proposal = self.get(name, proposal_id)
        with self._rejected_lock:
            kept = self.rejected(name)
            if all(p["id"] != proposal_id for p in kept):
                kept.append({"id": proposal_id, "segmentation": proposal["segmentation"]})
                atomic_write_bytes(self._rejected_path(name), json.dumps({"image": name, "proposals": kept}).encode())
        return proposal

    def shown(self, proposals: Sequence[dict], accepted: Sequence[dict], rejected: Sequence[dict]) -> list[dict]:
        """``proposals`` minus those overlapping an accepted object's or a rejected mask (COCO RLEs) by IoU > 0.5."""
        kept = filter_proposals(list(proposals), list(accepted), **self.filters)
        if not rejected or not kept:
            return kept
        # the strict thresholds were applied when the proposals were made; this pass only removes rejected masks
        return filter_proposals(kept, [r["segmentation"] for r in rejected], pred_iou_thresh=0.0,
                                stability_score_thresh=0.0, overlap_iou_thresh=OVERLAP_IOU_THRESH)


def _entry(round_index: int, k: int, record: dict) -> dict:
    """A cached proposal: its id, COCO RLE (counts a str) and scores."""
    rle = segmentation_to_coco_rle(record["segmentation"], f"proposal {k}")
    area = int(record.get("area") or 0)
    bbox = [float(v) for v in record.get("bbox", [0, 0, 0, 0])]
    return {"id": f"{round_index}-{k}", "segmentation": {"size": list(rle["size"]), "counts": rle["counts"]},
            "predicted_iou": float(record["predicted_iou"]), "stability_score": float(record["stability_score"]),
            "area": area, "bbox": bbox}


def overlapping(segmentation: dict, objects: Sequence[dict]) -> dict | None:
    """The first of ``objects`` (store objects) that ``segmentation`` overlaps by IoU > 0.5, else None."""
    for obj in objects:
        if not filter_proposals([{"segmentation": segmentation, "predicted_iou": 1.0, "stability_score": 1.0}],
                                [obj["segmentation"]]):
            return obj
    return None
