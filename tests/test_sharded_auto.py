"""``samforge engine auto`` and ``samforge segment-everything`` under torchrun: two CPU processes share out the images
and merge one result, the same as one process writes (ids, image ids, RLEs, scores), resumably; a failure on one
rank ends both with a message naming the rank and the image. And the pieces of ``samforge.utils.distributed``:
the split, rank 0's plan, the outcomes exchange, a silent rank reported instead of waited for."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from PIL import Image

from samforge.cli.main import main
from samforge.data.synthetic import make_scene
from samforge.utils.distributed import Processes, RankFailed, processes_from_env

pytestmark = pytest.mark.usefixtures("one_thread")

STEMS = ("a", "b", "c", "d", "e")
LOOSE = ["--model-type", "vit_small", "--points-per-side", "2", "--pred-iou-thresh", "0",
         "--stability-score-thresh", "0", "--box-nms-thresh", "1.0"]  # random weights: keep every mask


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv, processes: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node N -m samforge ARGV``, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                           f"--master_port={free_port()}", "-m", "samforge", *map(str, argv)],
                          env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sharded") / "images"
    folder.mkdir()
    for seed, stem in enumerate(STEMS):
        Image.fromarray(make_scene(seed, image_size=(40, 56)).image).save(folder / f"{stem}.png")
    return folder


@pytest.fixture(scope="module")
def one_process(images) -> dict[str, Path]:
    """The reference: each command run as today, in this process (one thread, as the torchrun processes)."""
    root = images.parent
    assert main(["engine", "auto", str(images), "--out", str(root / "auto1"), *LOOSE]) == 0
    assert main(["segment-everything", str(images), "--out", str(root / "se1"), *LOOSE]) == 0
    return {"auto": root / "auto1" / "auto" / "base", "se": root / "se1"}


def read_json(path: Path):
    return json.loads(path.read_text())


def assert_same_coco(got: dict, want: dict) -> None:
    """Same images and annotations, in the same order with the same ids; scores within 1e-6."""
    assert got["images"] == want["images"] and got["info"] == want["info"]
    assert len(got["annotations"]) == len(want["annotations"]) > 0
    for a, b in zip(got["annotations"], want["annotations"]):
        assert (a["id"], a["image_id"], a["segmentation"], a["bbox"], a["area"]) == \
               (b["id"], b["image_id"], b["segmentation"], b["bbox"], b["area"])
        for key in ("predicted_iou", "stability_score", "score"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)


# ------------------------------------------------------------------------------------ torchrun, two processes
def test_engine_auto_on_two_processes_writes_what_one_process_writes(images, one_process, tmp_path):
    result = torchrun("engine", "auto", images, "--out", tmp_path / "w", *LOOSE)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "w" / "auto" / "base"
    assert_same_coco(read_json(out / "annotations.json"), read_json(one_process["auto"] / "annotations.json"))
    assert read_json(out / "report.json") == read_json(one_process["auto"] / "report.json")
    for stem in STEMS:  # every rank's per-image files, as one process writes them
        assert (out / "masks" / f"{stem}.json").read_bytes() == \
               (one_process["auto"] / "masks" / f"{stem}.json").read_bytes()
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    assert "shared out among 2 processes" in result.stdout
    assert result.stdout.count(" pseudo-labels (") == 1  # the summary: rank 0 only


def test_segment_everything_on_two_processes_then_resumed_by_one(images, one_process, tmp_path, capsys):
    out = tmp_path / "se"
    result = torchrun("segment-everything", images, "--out", out, *LOOSE)
    assert result.returncode == 0, result.stderr[-3000:]
    want = one_process["se"]
    assert_same_coco(read_json(out / "annotations.json"), read_json(want / "annotations.json"))
    for d, suffix in (("masks", "json"), ("labels", "png"), ("overlays", "png")):
        for stem in STEMS:
            assert (out / d / f"{stem}.{suffix}").read_bytes() == (want / d / f"{stem}.{suffix}").read_bytes(), d
    assert "segment-everything [rank 0 of 2: its share]: 100%|██████████| 3/3" in result.stderr  # rank 0: a, c, e
    assert "[rank 1" not in result.stderr
    # a plain run over the sharded run's folder: everything done, nothing redone, the same annotations
    before = (out / "annotations.json").read_bytes()
    assert main(["segment-everything", str(images), "--out", str(out), *LOOSE]) == 0
    assert "5 already done, 0 to segment" in capsys.readouterr().out
    assert (out / "annotations.json").read_bytes() == before


def test_engine_auto_killed_run_is_finished_by_two_processes(images, one_process, tmp_path):
    """A killed run left b and d done (marked: a redone image would lose the mark) and a temporary file: the
    sharded rerun segments only a, c and e and merges all five."""
    out = tmp_path / "w" / "auto" / "base"
    (out / "masks").mkdir(parents=True)
    shutil.copy(one_process["auto"] / "settings.json", out / "settings.json")
    marked = {}
    for stem in ("b", "d"):
        records = read_json(one_process["auto"] / "masks" / f"{stem}.json")
        records[0]["predicted_iou"] = 0.123456
        (out / "masks" / f"{stem}.json").write_text(json.dumps(records))
        marked[stem] = records
    (out / "masks" / ".c.json.tmp-999999999-0badc0de").write_text("[")  # a temporary of a killed writer
    result = torchrun("engine", "auto", images, "--out", tmp_path / "w", *LOOSE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 already done, 3 to segment" in result.stdout
    assert not list((out / "masks").glob(".*"))
    for stem in ("b", "d"):
        assert read_json(out / "masks" / f"{stem}.json") == marked[stem]  # not redone
    coco, want = read_json(out / "annotations.json"), read_json(one_process["auto"] / "annotations.json")
    assert [a["id"] for a in coco["annotations"]] == [a["id"] for a in want["annotations"]]
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    changed = [a for a, b in zip(coco["annotations"], want["annotations"]) if a["predicted_iou"] != b["predicted_iou"]]
    assert [names[a["image_id"]] for a in changed] == ["b.png", "d.png"]
    assert all(a["predicted_iou"] == 0.123456 for a in changed)


def test_a_failure_on_one_rank_ends_both_naming_the_rank_and_image(images, tmp_path):
    """c.png (third image: rank 0's second) cannot be written; rank 1 finishes its share, both ranks stop with the
    error, no merged file is written, and a rerun finishes the rest."""
    out = tmp_path / "w" / "auto" / "base"
    (out / "masks" / "c.json").mkdir(parents=True)  # a folder where c's records go
    result = torchrun("engine", "auto", images, "--out", tmp_path / "w", *LOOSE)
    assert result.returncode != 0
    said = [line for line in result.stderr.splitlines() if line.startswith("samforge engine: error:")]
    assert len(said) >= 1 and all("rank 0 failed on image c.png: IsADirectoryError" in line for line in said)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.json", "b.json", "c.json", "d.json"]
    assert not (out / "annotations.json").exists()


# ------------------------------------------------------------------------------------ samforge.utils.distributed
def test_single_process_without_torchrun_env(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with processes_from_env("cpu") as procs:
        assert (procs.rank, procs.world_size, procs.main, procs.distributed) == (0, 1, True, False)
        assert procs.shard(list("abcde")) == list("abcde")
        assert procs.from_main(lambda: {"x": (1, 2)}) == {"x": [1, 2]}
        assert procs.all_outcomes({"n": 3}) == [{"n": 3}]
        assert str(procs.device("cpu")) == "cpu"
    assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="WORLD_SIZE=2 names several processes, but .*MASTER_ADDR"):
        with processes_from_env("cpu"):
            pass


def test_shard_splits_round_robin_and_checks_input():
    store = dist.HashStore()
    shares = [Processes(r, 3, r, store).shard(list(range(8))) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]
    with pytest.raises(TypeError, match="sequence of items, got str"):
        Processes().shard("abc")
    with pytest.raises(ValueError, match="rank must be < world_size 2, got 2"):
        Processes(2, 2, 0, store)
    with pytest.raises(ValueError, match="need a store"):
        Processes(0, 2)
    with pytest.raises(ValueError, match="--device must be a torch device"):
        Processes().device("gpu0")
    assert str(Processes(1, 2, 1, store).device("cpu")) == "cpu"
    if torch.cuda.device_count() < 2:  # rank 1 would run on cuda:1
        with pytest.raises(ValueError, match="LOCAL_RANK 1 runs on cuda:1, but this machine has"):
            Processes(1, 2, 1, store).device("cuda")


def run_ranks(work, world: int = 2, timeout_s: float = 30.0) -> list:
    """``work(procs)`` on ``world`` threads sharing one store, as ranks; each thread's result or exception."""
    store, results = dist.HashStore(), [None] * world

    def rank(r: int) -> None:
        try:
            results[r] = work(Processes(r, world, r, store, timedelta(seconds=timeout_s)))
        except Exception as e:
            results[r] = e

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_plan_and_outcomes_reach_every_rank():
    def work(procs):
        plan = procs.from_main(lambda: ["a", "b", "c"])
        procs.alive("x")
        return plan, procs.all_outcomes({"rank": procs.rank, "share": procs.shard(plan)})

    for plan, outcomes in run_ranks(work):
        assert plan == ["a", "b", "c"]
        assert outcomes == [{"rank": 0, "share": ["a", "c"]}, {"rank": 1, "share": ["b"]}]


def test_failures_are_raised_on_every_rank():
    def plan_fails(procs):
        return procs.from_main(lambda: 1 / 0)

    zero, one = run_ranks(plan_fails)
    assert isinstance(zero, ZeroDivisionError)
    assert isinstance(one, RankFailed) and "rank 0 failed before the work was shared out: ZeroDivisionError" in str(one)

    def work_fails(procs):
        error = "rank 1 failed on image b.png: OSError: disk full" if procs.rank == 1 else None
        return procs.all_outcomes({"done": []}, error)

    for result in run_ranks(work_fails):
        assert isinstance(result, RankFailed) and str(result) == "rank 1 failed on image b.png: OSError: disk full"


def test_a_silent_rank_is_reported_not_waited_for():
    """Rank 1 finishes one image, then goes silent; rank 0 stops waiting after the timeout, naming it."""
    gone = threading.Event()

    def work(procs):
        if procs.rank == 1:
            procs.alive("a.png")
            gone.wait(timeout=30)  # stuck until rank 0 gives up
            return None
        try:
            return procs.all_outcomes({"done": []})
        finally:
            gone.set()

    results = run_ranks(work, timeout_s=0.5)
    assert isinstance(results[0], RankFailed)
    assert "rank 1 made no progress for" in str(results[0]) and "after 1 item(s), the last a.png" in str(results[0])
