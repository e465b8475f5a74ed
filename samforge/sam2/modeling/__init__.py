"""``sam2.modeling`` under samforge (``sam2_base`` only)."""
