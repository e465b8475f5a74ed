"""The cost of one training step under each prompt recipe, against the preset's own recipe, in one process.

    .venv/bin/python benchmarks/recipe_step_cost.py --recipes sam,sam_fast --checkpoint runs/quickstart/checkpoints/best.pt

Builds the preset's model (``--checkpoint``: a trained one, so that objects reach ``stop_iou`` as they do in a run),
draws ``--batches`` training batches once, and times forward + backward of each recipe on the same batches with the
recipes interleaved (batch by batch), so that a load on the machine weighs on all of them alike: read the ratios.
A recipe is a name, or ``KEY=VALUE`` overrides joined by ``+`` (``prompts.recipe=sam+prompts.loss_rounds=2``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from samforge.models.build import load_sam
from samforge.train.config import load_config
from samforge.train.task import SamTask


def overrides(recipe: str) -> list[str]:
    """The command-line overrides that select ``recipe`` ("preset": the preset's own prompt settings)."""
    if recipe == "preset":
        return []
    return recipe.split("+") if "=" in recipe else [f"prompts.recipe={recipe}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="quickstart", help="training preset (default quickstart)")
    p.add_argument("--recipes", default="sam,sam_fast", help="comma-separated; the preset's own recipe is the baseline")
    p.add_argument("--checkpoint", default=None, help="trained weights of the preset's model (default: random init)")
    p.add_argument("--batches", type=int, default=8, help="training batches per repeat (default 8)")
    p.add_argument("--repeats", type=int, default=2, help="passes over the batches (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args()
    if args.batches < 1 or args.repeats < 1:
        raise SystemExit(f"--batches and --repeats must be >= 1, got {args.batches} and {args.repeats}")
    torch.set_num_threads(args.threads)
    recipes = ["preset", *[r for r in args.recipes.split(",") if r]]
    base = ["out=/tmp/recipe_step_cost", "data.val=synthetic:1:256:1000000"]
    cfgs = {r: load_config(args.preset, base + overrides(r)) for r in recipes}
    tasks = {r: SamTask(c) for r, c in cfgs.items()}
    task = tasks["preset"]
    train, _ = task.open_data()
    torch.manual_seed(0)
    built = task.build_model(torch.device("cpu"))
    model = built.model
    if args.checkpoint:
        model.load_state_dict(load_sam(args.checkpoint).state_dict())
    model.train()
    forward = task.training_forward(model, "fp32", None, torch.device("cpu"))
    samples = task.samples(train, built.image_size)
    size = cfgs["preset"].batch_size
    batches = [task.collate([samples[i] for i in range(j * size, (j + 1) * size)]) for j in range(args.batches)]
    times: dict[str, list[float]] = {r: [] for r in recipes}
    for rep in range(args.repeats):
        for j, batch in enumerate(batches):
            for r in recipes:
                rng = np.random.default_rng([0, j, rep])
                t0 = time.perf_counter()
                tasks[r].run(forward, batch, rng)["loss"].backward()
                model.zero_grad(set_to_none=True)
                times[r].append(time.perf_counter() - t0)
    total = sum(times["preset"])
    print(f"{args.preset}, {args.batches} batches x {args.repeats}, {args.threads} thread(s), "
          f"{'trained' if args.checkpoint else 'random'} weights")
    for r in recipes:
        print(f"{r:60s} {np.median(times[r]):.3f} s/step (median), {sum(times[r]) / total:.2f}x the preset's")


if __name__ == "__main__":
    main()
