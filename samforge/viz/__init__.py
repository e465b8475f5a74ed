"""Pictures of results: mask, point and box overlays, label maps."""

from samforge.viz.overlay import colorize_labels, draw_overlay, label_image

__all__ = ["colorize_labels", "draw_overlay", "label_image"]
