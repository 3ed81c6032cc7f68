"""Start a geomsim command as a group of local processes (jax.distributed on 127.0.0.1)."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A process that dies as if killed (no cleanup, no exit handlers) right after it wrote
# its first piece of work; `{target}` is the module whose `{function}` writes it.
DIES_AFTER_FIRST_WRITE = textwrap.dedent("""
    import importlib, os, runpy
    module = importlib.import_module("{target}")
    write = getattr(module, "{function}")
    def write_then_die(*args, **kwargs):
        result = write(*args, **kwargs)
        os._exit(9)
    setattr(module, "{function}", write_then_die)
    runpy.run_module("{cli}", run_name="__main__", alter_sys=True)
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm(port: int):
    """The environment SLURM's `srun --ntasks N` gives task `index` (for `--distributed`)."""
    return lambda index, count: {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "127.0.0.1",
                                 "SLURM_NTASKS": str(count), "SLURM_PROCID": str(index),
                                 "SLURM_LOCALID": str(index), "JAX_COORDINATOR_PORT": str(port)}


def run_together(argvs: list[list[str]], envs: list[dict[str, str]], cwd: Path = ROOT, timeout: float = 300
                 ) -> list[tuple[int, str]]:
    """Start every `argvs[i]` with environment `envs[i]` at once and wait for all;
    `[(exit status, stderr)]` per process (all killed after `timeout` seconds)."""
    procs = [subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv, env in zip(argvs, envs, strict=True)]
    results = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, err))
    finally:
        for proc in procs:
            proc.kill()
    return results


def launch(cli: str, args: list[str], processes: int, *, env: dict[str, str] | None = None,
           dies: tuple[int, str, str] | None = None, launcher=None, timeout: float = 300) -> list[tuple[int, str]]:
    """Run `python -m <cli> args` as `processes` processes on this machine and wait;
    `dies=(index, module, function)` kills process `index` after its first call of
    `module.function`; `launcher(index, count)`: environment variables of a cluster
    launcher, read through `--distributed` (default: the explicit flags).  Returns
    `[(exit status, stderr)]` per process."""
    group = [] if processes == 1 else ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes",
                                       str(processes)]
    environment = {**os.environ, "GEOMSIM_JAX_CACHE": str(ROOT / ".pytest_cache" / "jax"), **(env or {})}
    argvs, envs = [], []
    for index in range(processes):
        if launcher is not None:
            envs.append({**environment, **launcher(index, processes)})
            full = [*args, "--distributed"]
        else:
            envs.append(environment)
            full = [*args, *group, *(["--process-id", str(index)] if group else [])]
        if dies is not None and dies[0] == index:
            head = ["-c", DIES_AFTER_FIRST_WRITE.format(target=dies[1], function=dies[2], cli=cli)]
        else:
            head = ["-m", cli]
        argvs.append([sys.executable, *head, *full])
    return run_together(argvs, envs, timeout=timeout)
