"""All distributed state lives here: rank, local rank, world size, init, barrier, cleanup.

No other module reads RANK/WORLD_SIZE/LOCAL_RANK or calls `torch.distributed` setup directly.
torchrun sets those per process (from the PET_* environment the operator writes); a plain
`python -m finetune_trainer` run is a world of one.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from . import contract


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 of the whole job: uploads, writes manifests, serves /progress."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """Rank 0 of this node (pod): serves /metrics for the node."""
        return self.local_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_ENV: DistEnv | None = None


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def read_env() -> DistEnv:
    """The process's ranks, from torchrun's environment (a world of one without torchrun)."""
    rank = _int_env("RANK", 0)
    local_rank = _int_env("LOCAL_RANK", 0)
    world_size = _int_env("WORLD_SIZE", 1)
    local_world_size = _int_env("LOCAL_WORLD_SIZE", 1)
    node_rank = _int_env("GROUP_RANK", _int_env(contract.ENV_NODE_RANK, 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    else:
        device = torch.device("cpu")
    return DistEnv(rank, local_rank, world_size, local_world_size, node_rank, device)


#: How long a collective (a barrier included) may wait. The other ranks wait at a barrier while
#: rank 0 uploads the final weights (with retries), which for a large full model takes minutes.
DEFAULT_TIMEOUT_S = 1800.0


def init(timeout_s: float | None = None, *, group_for_one: bool = False) -> DistEnv:
    """Join the process group (NCCL on GPU, gloo on CPU) and set threads for CPU runs.

    `group_for_one`: make a group even for a world of one (DeepSpeed needs one; a single process
    needs no rendezvous, so an in-memory store is used instead of MASTER_ADDR/PORT).
    """
    global _ENV
    env = read_env()
    if "OMP_NUM_THREADS" not in os.environ and env.device.type == "cpu":
        # torchrun leaves OMP_NUM_THREADS unset with one process per node; share the cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if (env.distributed or group_for_one) and not dist.is_initialized():
        backend = "nccl" if env.device.type == "cuda" else "gloo"
        store = dist.HashStore() if not env.distributed and "MASTER_ADDR" not in os.environ else None  # type: ignore[attr-defined]
        for name, value in (("RANK", env.rank), ("LOCAL_RANK", env.local_rank), ("WORLD_SIZE", env.world_size)):
            os.environ.setdefault(name, str(value))  # what torchrun would set; DeepSpeed reads them
        dist.init_process_group(
            backend=backend,
            rank=env.rank,
            world_size=env.world_size,
            store=store,
            timeout=datetime.timedelta(seconds=timeout_s or float(os.environ.get("FINETUNE_COLLECTIVE_TIMEOUT_SECONDS") or DEFAULT_TIMEOUT_S)),
            device_id=env.device if env.device.type == "cuda" else None,
        )
    _ENV = env
    return env


def env() -> DistEnv:
    """The DistEnv of this process (`init` must have run; a world of one otherwise)."""
    return _ENV if _ENV is not None else read_env()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_max(value: float) -> float:
    """The largest `value` over all ranks (e.g. a preemption flag)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def all_gather_object(obj: Any) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


#: Bytes per broadcast when files are sent between nodes (the buffer each end holds).
SHARE_CHUNK_BYTES = 64 << 20


class SharedFetchError(RuntimeError):
    """What the node that fetched for all of them raised: its class name, message and the exit
    code it carries (None: not one of the trainer's errors)."""

    def __init__(self, kind: str, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code


def share_from_first_node(fetch: Callable[[], pathlib.Path], dest: pathlib.Path) -> pathlib.Path:
    """Run ``fetch()`` (it returns a local directory) on rank 0 only, then copy that directory's
    files to ``dest`` on the first rank of every other node, over a gloo group of those ranks
    (the files never leave the job's network; one request to the source per job). Returns the
    directory that holds the files on this node; the other ranks of a node wait for its copy.

    A failure of ``fetch`` reaches every rank: rank 0 raises it, the others SharedFetchError with
    its class name and message (no rank waits for files that will not come)."""
    me = env()
    if not (dist.is_available() and dist.is_initialized()):
        return fetch()
    # Every rank takes part in making the group (a collective), members or not.
    places = all_gather_object((me.is_local_main, me.node_rank))
    firsts = [rank for rank, (first, _node) in enumerate(places) if first]
    home = places[0][1]  # rank 0's node: its files are already there
    timeout = datetime.timedelta(seconds=float(os.environ.get("FINETUNE_COLLECTIVE_TIMEOUT_SECONDS") or DEFAULT_TIMEOUT_S))
    group = dist.new_group(ranks=firsts, backend="gloo", timeout=timeout)
    header: dict[str, Any] = {}
    failure: Exception | None = None
    if me.is_main:
        try:
            root = fetch()
            files = sorted(p for p in root.rglob("*") if p.is_file())  # symlinks (the HF cache) followed
            header = {"root": str(root), "files": [(str(p.relative_to(root)), p.stat().st_size) for p in files]}
        except Exception as err:  # every rank learns of it
            failure = err
            code = getattr(err, "exit_code", None)
            header = {"error": (type(err).__name__, str(err), code if isinstance(code, int) else None)}
    header = broadcast_object(header)
    if "error" in header:
        dist.destroy_process_group(group)
        if failure is not None:
            raise failure
        raise SharedFetchError(*header["error"])
    if me.is_local_main and len(firsts) > 1:
        _send_files(pathlib.Path(header["root"]) if me.is_main else dest, header["files"], me.is_main, group)
    barrier()
    dist.destroy_process_group(group)
    return pathlib.Path(header["root"]) if me.node_rank == home else dest


def _send_files(root: pathlib.Path, files: list[tuple[str, int]], sender: bool, group: Any) -> None:
    """Broadcast each file from rank 0 to the group in chunks (the receivers write them)."""
    buf = torch.empty(SHARE_CHUNK_BYTES, dtype=torch.uint8)
    for rel, size in files:
        target = root / rel
        if not sender:
            target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "rb" if sender else "wb") as f:
            left = size
            while left > 0:
                n = min(left, SHARE_CHUNK_BYTES)
                chunk = buf[:n]
                view = memoryview(chunk.numpy())  # type: ignore[arg-type]  # (numpy arrays are buffers)
                if sender and f.readinto(view) != n:  # type: ignore[attr-defined]
                    raise OSError(f"{target}: shorter than {size} bytes while being sent")
                dist.broadcast(chunk, src=0, group=group)
                if not sender:
                    f.write(view)
                left -= n


def _collective_device() -> torch.device:
    return env().device if env().device.type == "cuda" else torch.device("cpu")


def cleanup(*, success: bool = True) -> None:
    """Final barrier, then destroy the group: avoids the exit-time abort seen with gloo/DeepSpeed.

    After a failure the barrier is skipped (the other ranks may never reach it).
    """
    if dist.is_available() and dist.is_initialized():
        try:
            if success:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only (to stderr: stdout is kept for machine-readable summaries)."""
    if env().is_main:
        print(*args, file=sys.stderr, flush=True, **kwargs)
