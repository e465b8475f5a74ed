"""``samforge weights``: the official checkpoints by name: list them, download them into the cache, show where
they are. Every ``--checkpoint`` and ``--base`` also takes these names and downloads on first use."""

from __future__ import annotations

import argparse

from samforge.weights import WEIGHTS, DownloadError, cache_dir, is_cached, official, official_path, resolve_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="the official weights by name: list, download, path",
        description="The official SAM, SAM 2, SAM 2.1 and MedSAM checkpoints by name. Downloads go to "
        "$SAMFORGE_CACHE/weights (else $XDG_CACHE_HOME/samforge/weights, else ~/.cache/samforge/weights), are "
        "checked against the released size and SHA-256, and resume after an interruption. SAMFORGE_OFFLINE=1 never "
        "touches the network; SAMFORGE_WEIGHTS_MIRROR=http://host/prefix/ fetches prefix/FILE instead of the "
        "official hosts.",
    )
    actions = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    actions.add_parser("list", help="names, model types, sizes, and whether each is cached").set_defaults(run=run_list)
    d = actions.add_parser("download", help="download (and verify) official weights into the cache")
    d.add_argument("names", nargs="+", metavar="NAME",
                   help="official names (samforge weights list), http(s) URLs (#sha256=HEX) or Hugging Face ids")
    d.set_defaults(run=run_download)
    w = actions.add_parser("path", help="print where the cache keeps an official file (downloaded or not)")
    w.add_argument("name", metavar="NAME", help="an official name, e.g. sam_vit_b")
    w.set_defaults(run=run_path)


def _size(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 2**20:,.0f} MiB"


def _state(name: str) -> str:
    try:
        return "cached" if is_cached(name) else "-"
    except DownloadError:
        return "BAD (delete it)"


def run_list(args: argparse.Namespace) -> int:
    rows = [(w.name, w.model_type, _size(w.size), _state(w.name), w.hf_repo or "") for w in WEIGHTS.values()]
    header = ("NAME", "MODEL TYPE", "SIZE", "CACHED", "HUGGING FACE ID")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"cache: {cache_dir() / 'weights'}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    for name in args.names:
        path = resolve_checkpoint(name)
        kind = official(name)
        print(f"{name}: {path}" + (f" (model type {kind.model_type})" if kind else ""))
    return 0


def run_path(args: argparse.Namespace) -> int:
    path = official_path(args.name)
    print(path)
    if not path.is_file():
        print(f"(not downloaded yet: samforge weights download {args.name})")
    return 0
