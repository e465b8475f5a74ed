"""One SAM training step's forward pass: encode each image once, simulate prompts for every object, decode
several interactive rounds (first prompt, correction clicks, mask-only), and sum the losses."""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samforge.data.prompts import pack_stored_prompts
from samforge.data.recipes import correction_clicks, first_prompts, loss_rounds, round_schedule, round_survivors
from samforge.models.sam import Sam
from samforge.train.config import PromptConfig
from samforge.train.losses import SamLoss


def decode(
    model: Sam,
    embeddings: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    multimask: bool,
    image_pe: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode N prompt sets against N per-object image embeddings: low-res logits N x M x h x w, IoU N x M.
    A row of NaN in ``boxes`` means that object has no box (stored prompts may mix): the objects with a box and
    those without are decoded apart and put back in order. ``image_pe``: the image positional encoding
    (``model.prompt_encoder.get_dense_pe()``, computed here when None), to share it across rounds."""
    if image_pe is None:
        image_pe = model.prompt_encoder.get_dense_pe()
    if boxes is None or not torch.isnan(boxes).any():
        return _decode_once(model, embeddings, points, boxes, mask_input, multimask, image_pe)
    has_box = ~torch.isnan(boxes).any(1)
    low_res = iou = None
    for rows in (has_box.nonzero()[:, 0], (~has_box).nonzero()[:, 0]):
        if len(rows) == 0:
            continue
        part = _decode_once(model, embeddings[rows], None if points is None else (points[0][rows], points[1][rows]),
                            boxes[rows] if bool(has_box[rows[0]]) else None,
                            None if mask_input is None else mask_input[rows], multimask, image_pe)
        if low_res is None:
            low_res = part[0].new_empty((len(boxes), *part[0].shape[1:]))
            iou = part[1].new_empty((len(boxes), *part[1].shape[1:]))
        low_res[rows], iou[rows] = part
    return low_res, iou


def _decode_once(model: Sam, embeddings: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None,
                 boxes: torch.Tensor | None, mask_input: torch.Tensor | None, multimask: bool,
                 image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    return model.mask_decoder(
        image_embeddings=embeddings,
        image_pe=image_pe.expand(len(sparse), -1, -1, -1),  # a view: one encoding shared by all objects, not copied
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def initial_prompts(gts: np.ndarray, cfg: PromptConfig, rng: np.random.Generator, input_hw: list[tuple[int, int]],
                    image_index: np.ndarray, stored: list | None = None, names: list[str] | None = None,
                    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Each object's first prompt as the prompt recipe says (:func:`samforge.data.recipes.first_prompts`; by
    default a jittered box with probability ``box_prob``, else one positive point inside); with
    ``cfg.source == "stored"``, each object's stored prompt (``stored``, one per object; ``names`` the image of
    each). Returns (point coords N x P x 2, labels N x P, boxes N x 4), unused parts None."""
    if cfg.source == "stored":
        if stored is None:
            raise ValueError(f"prompts.source=stored, but no image of this batch has stored prompts ({names})")
        return pack_stored_prompts(stored, names if names is not None else ["?"] * len(stored))
    return first_prompts(gts, cfg, rng, [input_hw[i] for i in image_index])


def training_losses(
    model: Sam,
    batch: dict,
    cfg: PromptConfig,
    loss_fn: SamLoss,
    rng: np.random.Generator,
    loss_resolution: str = "input",
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Forward pass and losses of one micro-batch (call under autocast for bf16). ``loss`` is the mean over
    the rounds that carry a loss (all, unless ``cfg.loss_rounds`` says fewer); the other entries are detached
    statistics of the last round decoded, but ``miou_last_round``: the mean over objects of each one's IoU in the
    last round it took part in. ``embed``: images -> embeddings in place of the model's image encoder (e.g. an
    ``EmbeddingCache`` when the encoder is frozen).

    ``loss_resolution``: ``input`` compares logits upsampled to the input size with the masks (as SAM);
    ``low_res`` compares the low-res logits with area-downsampled (soft) masks, ~15x cheaper per round.

    The rounds share what does not depend on the prompts (the image embedding of each object, computed once per
    image, and the image positional encoding) and decode all the objects of the batch in one decoder call. Rounds
    without a loss run without gradient; objects whose IoU reaches ``cfg.stop_iou`` leave the later rounds, and at
    most ``cfg.round_objects`` objects go on after the first (:mod:`samforge.data.recipes`)."""
    device = model.device
    images = batch["images"].to(device, non_blocking=True)
    gts = batch["masks"].to(device)
    image_index = batch["image_index"]
    if len(gts) == 0:
        raise ValueError(f"no object to train on in this batch ({batch['names']})")
    size = images.shape[-1]
    encoder = model.image_encoder if embed is None else embed
    embeddings = encoder(images)[image_index.to(device)]  # one encoder pass per image
    image_pe = model.prompt_encoder.get_dense_pe()  # the same for every round and object
    low_res_size = model.prompt_encoder.mask_input_size
    targets = batch["targets"].to(device).float() if "targets" in batch else gts.float()  # soft targets stay soft
    if loss_resolution == "low_res":
        targets = F.interpolate(targets[:, None], low_res_size, mode="area")[:, 0]

    gts_np = gts.cpu().numpy()
    coords, labels, boxes = initial_prompts(gts_np, cfg, rng, batch["input_hw"], image_index.numpy(),
                                            batch.get("prompts"), [batch["names"][i] for i in image_index.tolist()])
    mask_input = None
    pred_np: np.ndarray | None = None  # this round's masks, for the next round's correction clicks
    rounds = round_schedule(cfg, rng)  # add a click?
    with_loss = loss_rounds(cfg, rounds, rng)  # back-propagate this round?
    ids = torch.arange(len(gts), device=device)  # the objects still in the rounds (all, until some leave)
    last_iou = torch.zeros(len(gts), device=device)
    losses = []
    for r, new_click in enumerate(rounds):
        if r > 0 and new_click:
            new_xy, new_label = correction_clicks(pred_np, gts_np, cfg, rng)
            coords = new_xy if coords is None else np.concatenate([coords, new_xy], axis=1)
            labels = new_label if labels is None else np.concatenate([labels, new_label], axis=1)
        points = None
        if coords is not None:
            points = (torch.as_tensor(coords, dtype=torch.float, device=device),
                      torch.as_tensor(labels, dtype=torch.int, device=device))
        box_t = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float, device=device)
        multimask = r == 0 and boxes is None and coords.shape[1] == 1  # an ambiguous single click
        with contextlib.nullcontext() if with_loss[r] else torch.no_grad():
            low_res, iou_pred = decode(model, embeddings, points, box_t, mask_input, multimask, image_pe=image_pe)
            logits = low_res.float()
            if loss_resolution == "input":
                logits = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
            out = loss_fn(logits, iou_pred, targets)
        if with_loss[r]:
            losses.append(out["loss"])
        # the candidate that goes on: the lowest-loss one, or (the SAM paper) the one the model is most confident of
        chosen = out["best"] if cfg.next_mask == "lowest_loss" else iou_pred.detach().float().argmax(dim=1)
        rows = torch.arange(len(chosen), device=chosen.device)
        chosen_iou = out["candidate_iou"][rows, chosen].detach()
        last_iou[ids] = chosen_iou
        mask_input = low_res[rows, chosen][:, None].detach().float()
        if r + 1 == len(rounds):
            break
        keep = round_survivors(chosen_iou.cpu().numpy(), cfg, r == 0, rng)
        if len(keep) == 0:
            break
        if len(keep) < len(ids):  # objects leave: the later rounds decode the others only
            rows_t = torch.as_tensor(keep, device=device)
            ids, embeddings, targets, mask_input = ids[rows_t], embeddings[rows_t], targets[rows_t], mask_input[rows_t]
            gts_np = gts_np[keep]
            coords = None if coords is None else coords[keep]
            labels = None if labels is None else labels[keep]
            boxes = None if boxes is None else boxes[keep]
        if rounds[r + 1]:  # the next round clicks on this round's errors
            full = F.interpolate(mask_input, (size, size), mode="bilinear", align_corners=False)
            pred_np = (full[:, 0] > 0).cpu().numpy()
    stats = {k: v for k, v in out.items() if k not in ("loss", "best", "true_iou", "candidate_iou")}
    stats["miou_last_round"] = last_iou.mean()
    return {"loss": torch.stack(losses).mean(), **stats}


class TrainingForward(nn.Module):
    """``training_losses`` as a module's forward, so DistributedDataParallel can wrap it (and synchronise
    the loss's own parameters, if it learns its weighting)."""

    def __init__(self, sam: Sam, loss_fn: SamLoss, embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.sam = sam
        self.loss_fn = loss_fn
        self.embed = embed

    def forward(self, batch: dict, cfg: PromptConfig, rng: np.random.Generator,
                loss_resolution: str = "input") -> dict[str, torch.Tensor]:
        return training_losses(self.sam, batch, cfg, self.loss_fn, rng, loss_resolution, self.embed)
