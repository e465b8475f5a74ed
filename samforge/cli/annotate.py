"""``samforge annotate``: the browser annotator. Serves a page on 127.0.0.1 (by default) where a person
clicks objects, accepts the model's masks with a label, and exports a dataset ``samforge train`` reads.

Saved as the user works: ``OUT/annotations/<image stem>.json`` (COCO RLE objects, one file per image).
Export (button or ``e`` on the page, or ``--export-only``): ``OUT/export/annotations.json`` (COCO),
``OUT/export/images/`` and ``OUT/export/masks/<stem>.png``; train with ``data.train=OUT/export``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from samforge.cli.common import add_model_args, add_precision_arg, load_model, prepare_out_dir

if TYPE_CHECKING:  # the web stack is imported only when the annotator runs
    from samforge.serve.store import AnnotationStore

DEFAULT_LABELS = ("object",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "annotate",
        help="annotate a folder of images in the browser, with the model in the loop",
        description="Start the browser annotator for IMAGES_DIR and print its URL. Left click: positive point, "
        "right or shift click: negative point, drag: box; a: accept, z: undo, n/p: next/previous image, "
        "Esc: clear, 1-9: label, d: done, s: segment everything, e: export. Labels are saved to "
        "OUT/annotations/ as you work; export writes OUT/export/ (COCO JSON + label PNGs), which "
        "`samforge train data.train=OUT/export` reads.",
    )
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of images (its top level)")
    add_model_args(p)
    add_precision_arg(p)
    p.add_argument("--out", required=True, metavar="LABELS_DIR", help="folder for the labels and the export")
    add_server_args(p)
    p.add_argument("--export-only", action="store_true",
                   help="write OUT/export from the saved labels and exit (no model, no server)")
    p.set_defaults(run=run)


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The annotator's flags shared by ``samforge annotate`` and ``samforge engine annotate``."""
    p.add_argument("--labels", default=",".join(DEFAULT_LABELS),
                   help="comma-separated label names offered on the page (default: object)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (anyone who reaches it can read images and edit labels)")
    p.add_argument("--cache-size", type=int, default=4, help="image embeddings kept in memory (default 4)")
    p.add_argument("--points-per-side", type=int, default=16,
                   help="grid of the 'segment everything' button (SAM v1 models) and of the data engine's "
                   "proposals (default 16)")


def check_server_args(args: argparse.Namespace) -> str | None:
    """Check the flags of :func:`add_server_args` before the (slow) model load; returns the warning to print for a
    non-loopback host (``samforge.serve.server.check_host``)."""
    from samforge.serve.server import check_host

    warning = check_host(args.host, args.allow_remote)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.points_per_side < 1:
        raise ValueError(f"--points-per-side must be >= 1, got {args.points_per_side}")
    if args.cache_size < 1:
        raise ValueError(f"--cache-size must be >= 1, got {args.cache_size}")
    return warning


def run(args: argparse.Namespace) -> int:
    # the web stack is imported here, so that other subcommands do not pay for it (nor need it installed)
    try:
        from samforge.serve.app import create_app
        from samforge.serve.images import ImageFolder
        from samforge.serve.server import allowed_hosts, serve
        from samforge.serve.store import AnnotationStore, check_labels
    except ImportError as e:
        raise ValueError(f"samforge annotate needs FastAPI and uvicorn ({e}): pip install 'samforge[annotate]'") from e

    labels = check_labels(args.labels.split(","))
    prepare_out_dir(args.out)
    if args.export_only:
        store = AnnotationStore(args.out, ImageFolder(args.images_dir), labels)
        _report_removed(store)
        result = store.export()
        print(f"exported {result['objects']} objects on {result['images']} images: wrote {result['folder']}")
        return 0
    warning = check_server_args(args)  # before the (slow) model load
    ImageFolder(args.images_dir)  # a bad folder fails before the model load too
    model = load_model(args)
    app = create_app(model, args.images_dir, args.out, labels, model_name=args.model_type or "checkpoint",
                     cache_size=args.cache_size, everything={"points_per_side": args.points_per_side},
                     allowed_hosts=allowed_hosts(args.host), precision=args.precision)
    _report_removed(app.state.annotator.store)
    if warning:
        print(warning, flush=True)
    serve(app, args.host, args.port, allow_remote=args.allow_remote)
    return 0


def _report_removed(store: AnnotationStore) -> None:
    """Say which temporaries of earlier, killed annotators the store removed when it opened."""
    for path in store.removed_temporaries:
        print(f"removed {path}, a temporary file left by a killed annotator", flush=True)
