"""Evaluation: mask metrics, SAM's prompt protocols, interactive clicks, dataset evaluation and reports."""

from samforge.evaluate.evaluator import EvalResult, ObjectResult, evaluate_dataset, evaluate_image
from samforge.evaluate.interactive import (
    CLICKS_REPORTED,
    MAX_CLICKS,
    NOC_THRESHOLDS,
    ClickTrace,
    click_loop,
    click_loops,
    noc,
)
from samforge.evaluate.metrics import iou_dice, iou_dice_torch, mask_dice, mask_iou
from samforge.evaluate.protocols import (
    PROTOCOLS,
    Prediction,
    Prompt,
    predict_prompts,
    protocol_prompts,
    run_protocols,
    run_protocols_many,
)
from samforge.evaluate.report import format_table
from samforge.evaluate.video_metrics import (
    VideoEvalResult,
    boundary_f,
    davis_statistics,
    evaluate_video,
    jaccard,
)

__all__ = [
    "CLICKS_REPORTED", "MAX_CLICKS", "NOC_THRESHOLDS", "PROTOCOLS",
    "ClickTrace", "EvalResult", "ObjectResult", "Prediction", "Prompt",
    "click_loop", "click_loops", "evaluate_dataset", "evaluate_image", "format_table",
    "iou_dice", "iou_dice_torch", "mask_dice", "mask_iou", "noc", "predict_prompts", "protocol_prompts",
    "run_protocols", "run_protocols_many",
    "VideoEvalResult", "boundary_f", "davis_statistics", "evaluate_video", "jaccard",
]
