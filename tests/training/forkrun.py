"""Run `swax_megatron.train.main(argv)` as N real processes forked from the test process.

Each rank is a separate process with its own pid, signal handlers, exit code and files, started
like torchrun starts workers (RANK / WORLD_SIZE / MASTER_* variables, OMP_NUM_THREADS=1); it is
forked from the test process, which has megatron imported already, so a launch costs well under
a second instead of the 7-10 s of a cold `python -m swax_megatron.train`. Unlike
multiprocessing's daemonic children, these may fork (dist_checkpointing's writers do).
SIGKILL is real: a killed rank shows up as exit code -9. The entry point itself, through the
local launcher, is exercised by `run_module`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = "recipes/tiny/swax.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Launch:
    codes: List[int]  # per rank; -N: killed by signal N
    logs: List[str]

    @property
    def log(self) -> str:
        return "\n".join(f"----- rank {r} -----\n{text}" for r, text in enumerate(self.logs))


def fork_run(argv: Sequence[str], world_size: int, log_dir: Path, *,
             env: Optional[Dict[str, str]] = None, timeout: float = 120.0) -> Launch:
    log_dir.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    pids = []
    for rank in range(world_size):
        log_path = log_dir / f"rank{rank}.log"
        pid = os.fork()
        if pid == 0:  # child
            code = 99
            try:
                fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                # pytest may have replaced sys.stdout / sys.stderr with capture objects.
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size),
                                  LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
                os.environ.update(env or {})
                for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                from swax_megatron.train import main

                code = main(list(argv))
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    codes: Dict[int, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(codes) < world_size:
            for rank, pid in enumerate(pids):
                if rank in codes:
                    continue
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[rank] = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                                   else os.WEXITSTATUS(status))
            if len(codes) < world_size:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ranks {sorted(set(range(world_size)) - set(codes))} "
                                       f"still running after {timeout:.0f}s\n"
                                       + _read_logs(log_dir, world_size))
                time.sleep(0.05)
    finally:
        for rank, pid in enumerate(pids):
            if rank not in codes:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except ProcessLookupError:
                    pass
    logs = [(log_dir / f"rank{r}.log").read_text(errors="replace") for r in range(world_size)]
    return Launch([codes[r] for r in range(world_size)], logs)


def _read_logs(log_dir: Path, world_size: int) -> str:
    return "\n".join((log_dir / f"rank{r}.log").read_text(errors="replace")[-3000:]
                     for r in range(world_size) if (log_dir / f"rank{r}.log").exists())


def run_module(argv: Sequence[str], *, env: Optional[Dict[str, str]] = None,
               timeout: float = 180.0) -> subprocess.Popen:
    """Start `python -m swax_megatron.train ARGV` (cold, through the local launcher)."""
    return subprocess.Popen([sys.executable, "-m", "swax_megatron.train", *argv],
                            cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def train_records(run_dir: Path) -> List[dict]:
    """The run's history in metrics.jsonl (superseded records of earlier attempts left out)."""
    from swax_megatron.training.metrics import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")


def find_run_dir(output_root: Path) -> Path:
    dirs = [p for p in output_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(dirs) == 1, f"expected one run directory under {output_root}, found {dirs}"
    return dirs[0]


# The overrides that shrink recipes/tiny/swax.yaml to a model training a step in a fraction of a
# second, on the `tiny_corpus` fixture's data.
def tiny_overrides(corpus, output_root: Path, *, steps: int = 8, every: int = 4,
                   extra=()) -> list:
    return [
        f"run.output_root={output_root}",
        f"data.source=[{corpus['prefix']}]", f"data.tokenizer_model={corpus['tokenizer']}",
        "data.split=95,5,0", f"data.cache_dir={corpus['cache']}",
        "model.hidden_size=64", "model.num_layers=2", "model.layer_pattern=XS",
        "model.num_attention_heads=4", "model.num_query_groups=2", "model.mlstm.num_heads=2",
        "model.mlstm.chunk_size=32", "model.swa.window=64",
        "train.seq_length=128", "train.micro_batch_size=2", "train.global_batch_size=4",
        f"train.steps={steps}", "train.eval_every=4", "train.eval_iters=1",
        "train.window_schedule.short=16", "train.window_schedule.long=64",
        "optim.warmup_steps=2", "optim.lr=1e-2",
        f"checkpoint.every_steps={every}", "checkpoint.every_minutes=null",
        "checkpoint.keep_last=3",
        *extra,
    ]


def error_lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith("swax-train: error:")]


def one_error_line(launch: Launch, *fragments: str, code: int = 2) -> str:
    """The job failed as bad input should: every rank exits with `code`, rank 0 prints exactly
    one error line (containing each fragment), no rank prints a traceback or another error."""
    assert launch.codes == [code] * len(launch.codes), launch.log
    lines = error_lines(launch.logs[0])
    assert len(lines) == 1, launch.log
    for f in fragments:
        assert f in lines[0], lines[0]
    for other in launch.logs[1:]:  # the other ranks stay quiet
        assert not error_lines(other), other
    assert all("Traceback" not in log for log in launch.logs), launch.log
    return lines[0]


def make_tiny_corpus(root: Path) -> dict:
    """What the tests' tiny training runs train on: paragraphs of three plays of the embedded
    corpus as documents, a 512-piece tokenizer, a megatron indexed dataset under `root`."""
    from swax_megatron.data.embedded import embedded_corpus
    from swax_megatron.data.indexed import write_indexed_dataset
    from swax_megatron.data.tokenizer import train_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    plays = embedded_corpus("train")[:3]
    docs = [p for play in plays for p in play.split("\n\n") if p.strip()]
    tok = train_tokenizer(docs, root / "tok", 512, num_threads=1)
    write_indexed_dataset(docs, root / "plays", tok)
    return {"prefix": str(root / "plays"), "tokenizer": str(tok.model_path),
            "cache": str(root / "cache"), "docs": docs}


def tiny_trained_run(root: Path, *, steps: int = 4, extra=()) -> Path:
    """A finished tiny training run (corpus, runs and logs under `root`, one rank, a checkpoint
    at the last step): its run directory. `extra`: more overrides, e.g. an eval section."""
    corpus = make_tiny_corpus(root / "corpus")
    argv = [TINY_RECIPE, *tiny_overrides(corpus, root / "runs", steps=steps, every=steps,
                                          extra=["slurm.gpus_per_node=1", *extra])]
    launch = fork_run(argv, 1, root / "logs", timeout=180)
    assert launch.codes == [0], launch.log
    return find_run_dir(root / "runs")
