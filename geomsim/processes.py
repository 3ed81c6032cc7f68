"""Several processes, one job: JAX's multi-controller runtime (`jax.distributed`).

A diagnosis is one SPMD program over a mesh of every process's devices
(`geomsim.diagnose --mesh`); its results are gathered to every process
(`host_values`) and process 0 writes the report.  In a sweep, grid points are
independent, so nothing inside a chunk's program talks to another
process: each process runs whole chunks on its own devices (the grid axis sharded
over `jax.local_devices()`) and writes them atomically; the processes only meet to
agree on which chunks are left, to wait for each other, and to let process 0 merge.
A chunk's program and batch are the same as in a one-process run with the same
local devices, so the merged tables are byte-identical to it.

Start every process with the same flags plus either
`--coordinator HOST:PORT --num-processes N --process-id I` or `--distributed` (a
cluster launcher's environment: SLURM, Open MPI, Kubernetes, Cloud TPU, or
`JAX_COORDINATOR_ADDRESS`, as `jax.distributed.initialize()` reads them).  A sweep's
`--out` must be one folder every process sees (a shared filesystem across hosts).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geomsim.config import ConfigError


def _first_line(err: Exception) -> str:
    """The first line of an error from JAX's runtime (they run to pages)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class ProcessLost(RuntimeError):
    """Another process of the group stopped (killed, crashed) before a meeting point."""


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the group: `index` in `[0, count)`; process 0 leads."""

    index: int = 0
    count: int = 1

    @property
    def leader(self) -> bool:
        return self.index == 0

    def label(self, text: str) -> str:
        """`text`, prefixed with the process number when there are several."""
        return text if self.count == 1 else f"[process {self.index}/{self.count}] {text}"

    def barrier(self, name: str) -> None:
        """Wait until every process reaches `name`; ProcessLost if one has stopped."""
        if self.count > 1:
            from jax.experimental import multihost_utils

            self._collective(name, lambda: multihost_utils.sync_global_devices(name))

    def agree(self, name: str, values: np.ndarray) -> np.ndarray:
        """Process 0's `values` on every process (same shape and dtype everywhere)."""
        if self.count == 1:
            return np.asarray(values)
        from jax.experimental import multihost_utils

        return np.asarray(self._collective(name, lambda: multihost_utils.broadcast_one_to_all(np.asarray(values))))

    def check_same(self, field: str, text: str, fix: str = "start every process with the same flags") -> None:
        """ConfigError on every process unless all of them passed the same `text` (`fix`: what to do)."""
        if self.count == 1:
            return
        from jax.experimental import multihost_utils

        code = np.frombuffer(text.encode().ljust(128, b"\0")[:128], dtype=np.uint8)
        gathered = np.asarray(self._collective(field, lambda: multihost_utils.process_allgather(code)))
        different = [i for i in range(self.count) if not np.array_equal(gathered[i], gathered[0])]
        if different:
            raise ConfigError(f"{field}: process {different[0]} was started with a different {field} than process 0; {fix}")

    def share(self, items: Sequence[Any]) -> list[Any]:
        """This process's share of `items` (round robin: balanced after a resume too)."""
        return list(items[self.index::self.count])

    def _collective(self, name: str, call):
        try:
            return call()
        except Exception as err:  # gloo/NCCL report a vanished peer as assorted runtime errors
            raise ProcessLost(
                f"process {self.index} of {self.count}: another process stopped before '{name}' ({_first_line(err)}); "
                "rerun every process (a sweep: with --resume, to keep its finished chunks)") from None


def current_group() -> ProcessGroup:
    """The group JAX was started in (one process unless `jax.distributed` was initialised)."""
    import jax

    return ProcessGroup(jax.process_index(), jax.process_count())


def host_values(tree: Any) -> Any:
    """`tree` with every array spread over other processes' devices gathered into a
    NumPy array on every process (a collective: every process calls it)."""
    import jax

    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            group = current_group()
            return np.asarray(group._collective("gathering results",
                                                lambda: multihost_utils.process_allgather(leaf, tiled=True)))
        return leaf

    return jax.tree.map(one, tree)


def add_process_flags(parser: argparse.ArgumentParser) -> None:
    """`--coordinator`, `--num-processes`, `--process-id`, `--distributed`."""
    group = parser.add_argument_group(
        "several processes (jax.distributed; every process gets the same flags and a shared --out)")
    group.add_argument("--coordinator", metavar="HOST:PORT", default=argparse.SUPPRESS,
                       help="address of process 0's coordination service (every process passes the same)")
    group.add_argument("--num-processes", metavar="N", type=int, default=argparse.SUPPRESS,
                       help="number of processes in the group (>= 1)")
    group.add_argument("--process-id", metavar="I", type=int, default=argparse.SUPPRESS,
                       help="this process's index in [0, N - 1]; process 0 merges the outputs")
    group.add_argument("--distributed", action="store_true", default=argparse.SUPPRESS,
                       help="take the group from a cluster launcher's environment (SLURM, Open MPI, Kubernetes, "
                            "Cloud TPU, JAX_COORDINATOR_ADDRESS)")


def start_processes(args: dict[str, Any]) -> bool:
    """Pop the process flags from parsed `args` and join the group they describe.

    Returns whether a group was started.  Call it before anything touches a JAX
    backend.  Bad values raise ConfigError with one line naming the flag.
    """
    coordinator = args.pop("coordinator", None)
    count = args.pop("num_processes", None)
    index = args.pop("process_id", None)
    auto = args.pop("distributed", False)
    if coordinator is None and count is None and index is None and not auto:
        return False
    if count is not None and count < 1:
        raise ConfigError(f"num-processes: must be an integer >= 1 (got {count})")
    if index is not None and (index < 0 or (count is not None and index >= count)):
        upper = "N - 1" if count is None else str(count - 1)
        raise ConfigError(f"process-id: must be in [0, {upper}] (got {index})")
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"coordinator: expected HOST:PORT with a port in [1, 65535] (got {coordinator!r})")
        if count is None or index is None:
            raise ConfigError("coordinator: also needs --num-processes N and --process-id I "
                              "(or --distributed to read them from a cluster launcher)")
    elif not auto:
        raise ConfigError("coordinator: --num-processes and --process-id need --coordinator HOST:PORT "
                          "(or --distributed to read it from a cluster launcher)")
    import jax

    try:
        jax.distributed.initialize(coordinator, count, index)
    except Exception as err:
        raise ConfigError(f"coordinator: could not join the process group ({_first_line(err)})") from None
    return True


def report_error(prog: str, err: Exception, code: int, several: bool) -> int:
    """Print `prog: error: err` and return `code`; in a group, leave at once instead:
    JAX's exit-time shutdown would wait for every other process (up to minutes) and
    then abort with a stack trace, while a vanished process fails theirs fast."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    if several:
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
