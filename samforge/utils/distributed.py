"""The processes of a job launched by ``torchrun`` that share out a list of independent items (the images of a folder):
which process this is, its share of the list, rank 0's plan sent to every rank, and every rank's outcome sent to
every rank. A failure on one rank is raised on all of them (:class:`RankFailed`, naming the rank and what it was
doing); a rank that stops making progress (no :meth:`Processes.alive` for the timeout) is reported by the ranks
waiting for it, never waited for forever. A rank that dies outright is torchrun's to end: it stops the others.

Without torchrun's environment (``WORLD_SIZE`` unset or 1) there is one process and nothing is set up: the same code
runs as a plain single-process job. With it: ``env://`` rendezvous (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``), a process group with gloo (and nccl for CUDA tensors when the job runs on CUDA, each
process on ``cuda:LOCAL_RANK``). Plans and outcomes go through the rendezvous key-value store as JSON, so a rank that
finishes early waits without a collective timeout: the limit is on silence, not on the job's length.

``SAMFORGE_DIST_TIMEOUT`` (minutes, default 60) bounds the setup (rendezvous, rank 0's plan) and a rank's silence.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
TIMEOUT_ENV = "SAMFORGE_DIST_TIMEOUT"  # minutes
DEFAULT_TIMEOUT = timedelta(minutes=60)
POLL_S = 0.2  # how often a waiting rank looks at the store
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankFailed(RuntimeError):
    """A rank of a sharded job failed or fell silent; raised on every rank, the message naming the rank."""


@dataclass
class Processes:
    """This process among the job's ``world_size`` processes (``rank`` 0 is the main one). ``store`` is the ranks'
    shared key-value store, None for a single process (then every exchange is local)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    store: dist.Store | None = None
    timeout: timedelta = DEFAULT_TIMEOUT
    _exchanges: int = field(default=0, repr=False)  # exchanges so far: each gets its own keys
    _beats: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        for name in ("rank", "world_size", "local_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Processes.{name} must be an int >= 0, got {value!r}")
        if not self.rank < self.world_size:
            raise ValueError(f"Processes.rank must be < world_size {self.world_size}, got {self.rank}")
        if self.world_size > 1 and self.store is None:
            raise ValueError(f"Processes of world_size {self.world_size} need a store shared by the ranks, got None")
        if not isinstance(self.timeout, timedelta) or self.timeout.total_seconds() <= 0:
            raise ValueError(f"Processes.timeout must be a positive timedelta, got {self.timeout!r}")

    @property
    def main(self) -> bool:
        """True on rank 0, the process that plans, merges and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: item i goes to rank i % world_size (the same split on every rank, sizes
        within one of each other)."""
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise TypeError(f"shard expects a sequence of items, got {type(items).__name__}")
        return list(items[self.rank::self.world_size])

    def device(self, spec: str | torch.device) -> torch.device:
        """The torch device ``spec`` means for this process: with several processes, ``cuda`` (or ``cuda:N``) is
        ``cuda:LOCAL_RANK``, one GPU per process, made the current CUDA device."""
        try:
            device = torch.device(spec)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"--device must be a torch device such as cpu, cuda or cuda:0, got {spec!r}") from e
        if device.type != "cuda" or not self.distributed:
            return device
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if self.local_rank >= count:
            raise ValueError(f"rank {self.rank}: LOCAL_RANK {self.local_rank} runs on cuda:{self.local_rank}, but "
                             f"this machine has {count} CUDA device(s): launch at most {count} processes per node "
                             "(torchrun --nproc_per_node)")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def from_main(self, make: Callable[[], T]) -> T:
        """Rank 0 runs ``make()``; every rank gets what it returned, as JSON gives it back (tuples become lists; on
        rank 0 too, so every rank holds the same). An exception in ``make`` is raised on rank 0 and, as
        :class:`RankFailed` naming rank 0, on the others."""
        if not self.distributed:
            return json.loads(json.dumps(make()))
        key = self._next_key("plan")
        if self.main:
            try:
                text = json.dumps({"value": make()})
            except Exception as e:
                self.store.set(key, json.dumps({"error": f"{type(e).__name__}: {e}"}))
                raise
            self.store.set(key, text)
            return json.loads(text)["value"]
        try:
            self.store.wait([key], self.timeout)
        except RuntimeError as e:  # the store's timeout (DistStoreError)
            raise RankFailed(f"rank {self.rank}: rank 0 sent no plan within {_minutes(self.timeout)} ({e})") from e
        got = json.loads(self.store.get(key))
        if "error" in got:
            raise RankFailed(f"rank 0 failed before the work was shared out: {got['error']}")
        return got["value"]

    def alive(self, note: str = "") -> None:
        """Say this rank is making progress (after each item; ``note`` says where it is, for a stall report)."""
        self._beats += 1
        if self.store is not None:
            self.store.set(f"beat/{self._exchanges}/{self.rank}", f"{self._beats} {note}")

    def all_outcomes(self, outcome: Any, error: str | None = None, cause: BaseException | None = None) -> list:
        """Every rank's ``outcome`` (JSON-able), in rank order, on every rank once all have sent theirs. ``error``:
        this rank failed (the message names the rank and the item); then, or when any rank sent one, every rank
        raises :class:`RankFailed` listing them (``cause`` chained on this rank). A rank silent (no :meth:`alive`)
        for the timeout is reported the same way instead of waited for."""
        if error is not None and not isinstance(error, str):
            raise TypeError(f"error must be a message (str) or None, got {type(error).__name__}")
        text = json.dumps({"outcome": outcome, "error": error})
        if not self.distributed:
            got = [json.loads(text)]
        else:
            key = self._next_key("outcome")
            self.store.set(f"{key}/{self.rank}", text)
            self._wait_for_ranks(key)
            got = [json.loads(self.store.get(f"{key}/{r}")) for r in range(self.world_size)]
            if dist.is_initialized():
                dist.barrier()  # nobody leaves (rank 0 may host the store) before every rank has read
        errors = [g["error"] for g in got if g["error"] is not None]
        if errors:
            raise RankFailed("; ".join(errors)) from cause
        return [g["outcome"] for g in got]

    def _next_key(self, what: str) -> str:
        self._exchanges += 1
        return f"{what}/{self._exchanges}"

    def _wait_for_ranks(self, key: str) -> None:
        """Until every rank has set ``key/<rank>``; a rank whose beat stays the same for the timeout is reported."""
        beat_key = f"beat/{self._exchanges - 1}"  # the beats of the work before this exchange
        heard = {r: (b"", time.monotonic()) for r in range(self.world_size)}  # last beat seen, and when it changed
        while True:
            missing = [r for r in range(self.world_size) if not self.store.check([f"{key}/{r}"])]
            if not missing:
                return
            now = time.monotonic()
            for r in missing:
                beat = self.store.get(f"{beat_key}/{r}") if self.store.check([f"{beat_key}/{r}"]) else b""
                if beat != heard[r][0]:
                    heard[r] = (beat, now)
                elif now - heard[r][1] > self.timeout.total_seconds():
                    count, _, note = beat.decode().partition(" ")
                    where = f"after {count} item(s), the last {note}" if beat else "before finishing any item"
                    raise RankFailed(f"rank {r} made no progress for {_minutes(self.timeout)} ({where}): it may be "
                                     f"stuck; rank {self.rank} stops waiting ({TIMEOUT_ENV}=MINUTES waits longer)")
            time.sleep(POLL_S)


def _minutes(t: timedelta) -> str:
    return f"{t.total_seconds() / 60:g} min"


def timeout_from_env() -> timedelta:
    """``SAMFORGE_DIST_TIMEOUT`` (minutes, > 0) or the default of 60 minutes."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        minutes = float(text)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0 or minutes == float("inf"):
        raise ValueError(f"{TIMEOUT_ENV} must be a number of minutes > 0, got {text!r}")
    return timedelta(minutes=minutes)


def _env_int(name: str) -> int:
    text = os.environ[name]
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"environment variable {name} must be an int >= 0 (torchrun sets it), got {text!r}")
    return value


@contextlib.contextmanager
def processes_from_env(device: str | torch.device = "cpu") -> Iterator[Processes]:
    """The job's processes as torchrun's environment describes them, the process group set up for the block and
    torn down after it; a single :class:`Processes` when the environment names no more than one process. ``device``
    picks the backend: gloo, plus nccl for CUDA tensors when it is a CUDA device."""
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        yield Processes()
        return
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} names several processes, but {', '.join(missing)} "
                         "is unset: launch with torchrun --nproc_per_node N (or unset WORLD_SIZE for one process)")
    if dist.is_initialized():
        raise ValueError("a torch.distributed process group is already set up in this process: "
                         "processes_from_env sets up its own")
    timeout = timeout_from_env()
    local_rank = _env_int("LOCAL_RANK")
    try:
        cuda = torch.device(device).type == "cuda"
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device must be a torch device such as cpu, cuda or cuda:0, got {device!r}") from e
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", store=dist.PrefixStore("default_pg", store),
                            rank=rank, world_size=world_size, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted group starts afresh
    try:
        yield Processes(rank, world_size, local_rank, dist.PrefixStore(f"samforge/{attempt}", store), timeout)
    finally:
        dist.destroy_process_group()
