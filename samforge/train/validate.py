"""Quick validation during training: loss, and mIoU/Dice of the box and centre-point prompts, batched over
all objects of a few held-out images in the model's input frame; for named structures (REFUGE's disc and cup)
also the box and centre-point Dice of each (``box_dice_disc``, ...). (The full protocol evaluation runs at the end.)"""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import torch
import torch.nn.functional as F

from samforge.data.prompts import interior_point, mask_to_box
from samforge.evaluate.metrics import iou_dice_torch
from samforge.models.sam import Sam
from samforge.train.losses import SamLoss
from samforge.train.step import decode


@torch.no_grad()
def validate(model: Sam, batches: list[dict], loss_fn: SamLoss, autocast: AbstractContextManager) -> dict[str, float]:
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    per_structure: dict[str, int] = {}  # objects of each named structure
    for batch in batches:
        gts = batch["masks"].to(model.device)
        if len(gts) == 0:
            continue
        gts_np = gts.cpu().numpy()
        size = batch["images"].shape[-1]
        with autocast:
            emb = model.image_encoder(batch["images"].to(model.device))[batch["image_index"].to(model.device)]
            boxes = torch.as_tensor(np.stack([mask_to_box(g) for g in gts_np]), dtype=torch.float, device=model.device)
            box_low, box_iou = decode(model, emb, None, boxes, None, multimask=False)
            centres = torch.as_tensor(np.stack([interior_point(g) for g in gts_np])[:, None], dtype=torch.float,
                                      device=model.device)
            labels = torch.ones(centres.shape[:2], dtype=torch.int, device=model.device)
            pt_low, pt_iou = decode(model, emb, (centres, labels), None, None, multimask=True)
        box_logits = F.interpolate(box_low.float(), (size, size), mode="bilinear", align_corners=False)
        best = pt_iou.float().argmax(1)
        pt_logits = F.interpolate(pt_low[torch.arange(len(best)), best][:, None].float(), (size, size),
                                  mode="bilinear", align_corners=False)
        loss = loss_fn(box_logits, box_iou, gts)["loss"]
        box_iou_v, box_dice_v = iou_dice_torch(box_logits[:, 0] > 0, gts)
        pt_iou_v, pt_dice_v = iou_dice_torch(pt_logits[:, 0] > 0, gts)
        n = len(gts)
        for key, value in (("loss", loss * n), ("box_miou", box_iou_v.sum()), ("box_dice", box_dice_v.sum()),
                           ("point_miou", pt_iou_v.sum()), ("point_dice", pt_dice_v.sum())):
            sums[key] = sums.get(key, 0.0) + float(value)
        count += n
        for k, name in enumerate(batch.get("structures", [])):  # named structures (REFUGE): Dice of each
            for key, value in ((f"box_dice_{name}", box_dice_v[k]), (f"point_dice_{name}", pt_dice_v[k])):
                sums[key] = sums.get(key, 0.0) + float(value)
            per_structure[name] = per_structure.get(name, 0) + 1
    model.train(was_training)
    if count == 0:
        raise ValueError("validation data has no object")
    return {k: v / (per_structure[k.split("_dice_", 1)[1]] if "_dice_" in k else count) for k, v in sums.items()}
