"""Scale-out: the stacked ensemble state sharded over a device mesh, on one host or many.

Members are independent (no cross-member communication while training), so the mesh has
one axis, `members`: device d holds a contiguous block of `local_members` members and runs
the member-parallel strategy chosen by `auto` (vmap / unrolled / sequential) on its block,
inside `jax.shard_map` under `jax.jit`. The mesh uses `AxisType.Auto` (jax >= 0.9 defaults
`make_mesh` to Explicit axes, on which a vmapped conv with a sharded member axis fails).

Multi-host: `initialize_distributed` calls `jax.distributed.initialize`; the mesh then spans
every process's devices, each process holds (and trains) the members on its own devices,
and `to_host` gathers global arrays with `multihost_utils.process_allgather` (gloo
collectives on CPU). Only process 0 writes files (`is_primary`).

Padding: M members on D devices are padded to `D * ceil(M / D)` by repeating members
cyclically (`pad_index`); a padded member is an exact copy of a real one (same key and
subset), its results are dropped, and checkpoints hold only the M real members, so a run
saved on D devices restores on any other device count.

Not offered: a `pmap` form (in maintenance mode since jax 0.8, implemented on shard_map)
and a `data` mesh axis (one member's batch split over devices: members here are small, and
the member axis alone fills any device count up to the number of members).
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXIS = "members"
tree_map = jax.tree_util.tree_map


# --------------------------------------------------------------------------- processes
def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """`jax.distributed.initialize` from arguments or the usual environment variables
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). Must run before any
    other JAX call. Returns True when a multi-process runtime was started."""
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes {num_processes}: must be >= 1 (or leave it out)")
    if process_id is not None and (process_id < 0 or (num_processes is not None
                                                      and process_id >= num_processes)):
        raise ValueError(f"--process-id {process_id}: must be in 0..number of processes - 1"
                         + (f" ({num_processes - 1})" if num_processes else ""))
    if coordinator is None and not num_processes:
        return False
    if num_processes == 1:
        return False
    if coordinator is None or num_processes is None or process_id is None:
        raise ValueError("multi-process run: give all of coordinator address, number of "
                         f"processes and process id (got {coordinator!r}, {num_processes!r}, "
                         f"{process_id!r}); flags --coordinator/--num-processes/--process-id "
                         "or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True


def is_primary() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def agree(value: int) -> int:
    """Process 0's integer, on every process (decisions that must match, e.g. strategy)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def any_process(flags: Sequence[bool]) -> list[bool]:
    """Element-wise OR of `flags` over every process (e.g. strategies that failed on
    some process: none of them may be chosen)."""
    if jax.process_count() == 1:
        return [bool(f) for f in flags]
    from jax.experimental import multihost_utils
    got = np.asarray(multihost_utils.process_allgather(np.asarray(flags, np.int32)))
    return [bool(x) for x in got.reshape(jax.process_count(), -1).max(0)]


# --------------------------------------------------------------------------- mesh
def make_mesh(devices_per_process: int | None = None,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh over axis `members`: the first `devices_per_process` local devices of
    every process (default all), ordered by process so each process's members are one
    contiguous block."""
    if devices is None:
        devices = []
        for p in range(jax.process_count()):
            local = sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)
            if devices_per_process:
                if devices_per_process > len(local):
                    raise ValueError(f"--devices {devices_per_process}: process {p} has only "
                                     f"{len(local)} {jax.default_backend()} device(s)")
                local = local[:devices_per_process]
            devices += local
    return Mesh(np.asarray(list(devices)), (AXIS,), axis_types=(AxisType.Auto,))


def n_shards(mesh: Mesh) -> int:
    return int(mesh.shape[AXIS])


def member_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def pad_index(m: int, mesh: Mesh) -> np.ndarray:
    """int32 [M_pad]: padded slot -> real member (cyclic), M_pad = D * ceil(M / D)."""
    return (np.arange(n_shards(mesh) * math.ceil(m / n_shards(mesh))) % m).astype(np.int32)


def put_global(x: Any, sharding: NamedSharding) -> jax.Array:
    """A host array (identical on every process) as a global array with `sharding`; each
    process supplies only its own shards, so this works across hosts."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def put_members(tree: Any, mesh: Mesh) -> Any:
    return tree_map(lambda x: put_global(x, member_sharding(mesh)), tree)


def to_host(tree: Any) -> Any:
    """Global (possibly multi-process) arrays -> full NumPy arrays on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def first_members(tree: Any, m: int, sharding: Any) -> Any:
    """The first m members of a padded stacked tree, laid out with `sharding`."""
    return jax.jit(lambda t: tree_map(lambda x: x[:m], t), out_shardings=sharding)(tree)


def checkpoint_sharding(m: int, mesh: Mesh) -> NamedSharding:
    """How the M real members are laid out in a checkpoint save/restore target: sharded
    when M divides over the mesh, else replicated (then padded on device)."""
    return member_sharding(mesh) if m % n_shards(mesh) == 0 else replicated(mesh)


def pad_members(tree: Any, m: int, mesh: Mesh) -> Any:
    """[M] stacked tree -> [M_pad] sharded over `members` (cyclic copies as padding)."""
    idx = jnp.asarray(pad_index(m, mesh))
    return jax.jit(lambda t: tree_map(lambda x: x[idx], t),
                   out_shardings=member_sharding(mesh))(tree)


def local_share(m: int) -> tuple[int, int]:
    """This process's contiguous block [lo, hi) of m items (for host-side work such as
    predictions), blocks of ceil(m / processes)."""
    share = math.ceil(m / jax.process_count())
    lo = min(m, jax.process_index() * share)
    return lo, min(m, lo + share)


def gather_blocks(block: Any, m: int) -> Any:
    """Each process's [hi - lo, ...] block (from `local_share`) -> the full [m, ...] on
    every process."""
    if jax.process_count() == 1:
        return block
    from jax.experimental import multihost_utils
    share = math.ceil(m / jax.process_count())
    pad = lambda x: np.pad(np.asarray(x), [(0, share - len(x))] + [(0, 0)] * (np.ndim(x) - 1))
    stacked = multihost_utils.process_allgather(tree_map(pad, block), tiled=False)
    return tree_map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:])[:m], stacked)


def predict_gathered(result: Any, images: np.ndarray) -> Any:
    """`result.predict(images)` with the members split over processes (each predicts its
    contiguous share) and gathered on every process; one process predicts them all."""
    m = result.n_members
    if jax.process_count() == 1:
        return result.predict(images)
    lo, hi = local_share(m)
    members = list(range(lo, hi)) or [0]      # a process with no share still takes part
    p = result.predict(images, members=members)
    block = (p.keypoints[:hi - lo], p.confidences[:hi - lo])
    kp, conf = gather_blocks(block, m)
    return type(p)(np.asarray(kp, np.float32), np.asarray(conf, np.float32), None)
