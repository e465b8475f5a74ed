"""Small shared helpers."""

from samforge.utils.atomic import atomic_path, atomic_write_bytes, save_png

__all__ = ["atomic_path", "atomic_write_bytes", "save_png"]
