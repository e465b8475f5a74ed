"""``samforge lora merge``: fold a LoRA adapter into its base weights and write a plain checkpoint that
``sam_model_registry[TYPE](checkpoint=...)`` loads."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from samforge.cli.common import prepare_out_file
from samforge.cli.finetune import parse_base
from samforge.models.build import build_sam, load_sam
from samforge.models.lora import merge_lora
from samforge.train.adapter_file import load_adapter
from samforge.utils.atomic import atomic_path
from samforge.weights import resolve_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="LoRA adapters: merge one into its base checkpoint")
    actions = p.add_subparsers(dest="lora_command", required=True, metavar="ACTION")
    m = actions.add_parser(
        "merge",
        help="fold an adapter into the base weights and write a plain checkpoint",
        description="Load the base, check that the adapter was trained on it, add the adapter (and the weights "
        "it trained along, such as the mask decoder), fold it into the weights and write a plain state dict "
        "(.pth, or .safetensors by its suffix).",
    )
    m.add_argument("--base", required=True, help="TYPE:CHECKPOINT (e.g. vit_b:sam_vit_b_01ec64.pth, vit_b:sam_vit_b), "
                   "an official name (sam_vit_b) or a samforge checkpoint")
    m.add_argument("--adapter", required=True, help="adapter.safetensors written by samforge finetune --mode lora")
    m.add_argument("--out", required=True, help="merged checkpoint to write (.pth or .safetensors)")
    m.set_defaults(run=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    model_type, name = parse_base(args.base)
    checkpoint = str(resolve_checkpoint(name, what="--base checkpoint"))  # a name, URL or hub id -> its cached file
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--base checkpoint not found: {checkpoint}")
    out = Path(args.out)
    if out.suffix not in (".pth", ".pt", ".safetensors"):
        raise ValueError(f"--out must end in .pth, .pt or .safetensors, got {out}")
    prepare_out_file(out)
    model = load_sam(checkpoint) if model_type == "checkpoint" else build_sam(model_type, checkpoint)
    config = load_adapter(model, args.adapter)
    merge_lora(model)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    kind = model_type if model_type != "checkpoint" else "the base's type"
    print(f"merged {args.adapter} (rank {config.rank}, alpha {config.alpha}) into {checkpoint}; "
          f"load it with sam_model_registry[{kind!r}](checkpoint={str(out)!r})")
    print(f"wrote {out.resolve()}")
    return 0
