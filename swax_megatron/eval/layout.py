"""`swax eval RUN_DIR --layout run`: the checkpoint evaluated by the megatron model at the run's own
tensor x pipeline parallel layout, one process per rank (gloo on CPU, NCCL on GPUs), instead of
the single-process Hugging Face model (harness.HFBackend). Same tasks, same results files, same
numbers (tests/eval/test_eval_layout.py); the files record which layout wrote them.

    evaluate_run(run_dir, layout="run")   # harness.py: this module's evaluate_at_run_layout

Processes: under srun or torchrun with tp x pp ranks, each rank is a worker; otherwise a run at
TP = PP = 1 is evaluated in this process, and a larger one by tp x pp local worker processes
(`python -m swax_megatron.eval.layout`, the torchrun variables set, as training/launch.py starts
training). Every rank computes every task (the collectives need it); only rank 0 writes files.

MegatronBackend serves the harness' kinds on this rank's stage:
- teacher forced (probes, perplexity by position): one forward of the whole sequence, stage to
  stage by explicit send / recv; on the last stage the logits LOGITS_CHUNK positions at a time,
  gathered over the vocab-parallel TP ranks; the argmax / losses are broadcast over the pipeline
  so every rank holds them;
- generation: greedy decoding, batched and left padded, with the model's incremental decoding
  (models.model.InferenceState: a prefill, then one token per step through every stage; S layers
  keep the keys of the last window - 1 tokens, X layers their (C, n, m) state). Each step's tokens
  are broadcast from the last stage to all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

GRACE_SECONDS = 20.0  # after one worker fails, the others get this long before they are killed


def run_layout(recipe) -> tuple:
    """(tp, pp) of the run's recipe."""
    p = recipe.parallel
    return p.tensor_model_parallel_size, p.pipeline_model_parallel_size


class MegatronBackend:
    """This rank's stage of the megatron model in a tp x pp world (harness.HFBackend's interface)."""

    def __init__(self, model):
        import torch
        from megatron.core import parallel_state as ps

        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        self.model = model.to(self.device).eval()
        self.first, self.last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
        self.pp = ps.get_pipeline_model_parallel_world_size()
        self.tp = ps.get_tensor_model_parallel_world_size()
        if self.pp > 1:
            self.pp_group = ps.get_pipeline_model_parallel_group()
            self.prev = ps.get_pipeline_model_parallel_prev_rank()
            self.next = ps.get_pipeline_model_parallel_next_rank()
            self.last_rank = ps.get_pipeline_model_parallel_last_rank()
        self.hidden = model.config.hidden_size
        self.dtype = next(model.parameters()).dtype
        self.layout = {"kind": "run", "backend": "megatron", "tp": self.tp, "pp": self.pp}

    def set_window(self, window: int) -> None:
        self.model.set_swa_window(window)

    # --- stage to stage ----------------------------------------------------------------------------
    def _stage(self, ids, state=None):
        """ids [b, s] (known on every rank) through this stage: the final hidden states [s, b, h]
        on the last stage, None on the others."""
        import torch

        if self.first:
            out = self.model(ids, inference_state=state, return_hidden=True)
        else:
            x = torch.empty(ids.shape[1], ids.shape[0], self.hidden, dtype=self.dtype, device=self.device)
            torch.distributed.recv(x, src=self.prev)
            self.model.set_input_tensor(x)
            out = self.model(None, inference_state=state, return_hidden=True)
        if not self.last:
            torch.distributed.send(out.contiguous(), dst=self.next)
            return None
        return out

    def _logits(self, hidden):
        """Final hidden states [n, b, h] -> full-vocabulary logits [n, b, vocab] (fp32)."""
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        logits = self.model.output_logits(hidden)
        if self.tp > 1:
            logits = gather_from_tensor_model_parallel_region(logits)
        return logits.float()

    def _share(self, value, shape, dtype):
        """`value` (computed on the last stage) on every rank of the pipeline."""
        import torch

        if self.pp == 1:
            return value
        buf = value if self.last else torch.empty(shape, dtype=dtype, device=self.device)
        torch.distributed.broadcast(buf, src=self.last_rank, group=self.pp_group)
        return buf

    # --- the harness' kinds --------------------------------------------------------------------------
    def _teacher_forced(self, ids, per_chunk, dtype):
        import torch

        from .harness import LOGITS_CHUNK

        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        h = self._stage(x)
        out = None
        if self.last:
            parts = [per_chunk(a, self._logits(h[a:a + LOGITS_CHUNK])[:, 0])
                     for a in range(0, h.shape[0], LOGITS_CHUNK)]
            out = torch.cat([p for p in parts if p is not None]).to(dtype)
        return out

    def next_argmax(self, ids: Sequence[int]) -> List[int]:
        import torch

        out = self._teacher_forced(ids, lambda a, logits: logits.argmax(-1), torch.long)
        return self._share(out, (len(ids),), torch.long).tolist()

    def token_losses(self, ids: Sequence[int], targets: Sequence[int]):
        import torch

        target = torch.tensor(list(targets), dtype=torch.long, device=self.device)

        def losses(a, logits):
            n = min(logits.shape[0], len(target) - a)
            if n <= 0:
                return None
            return torch.nn.functional.cross_entropy(logits[:n], target[a:a + n], reduction="none")

        out = self._teacher_forced(ids, losses, torch.float32)
        return self._share(out, (len(target),), torch.float32).cpu()

    def generate(self, prompts: Sequence[Sequence[int]], new_tokens: int, eos: int) -> List[List[int]]:
        """Greedy continuations (up to new_tokens each; after an eos, anything) of a batch of
        prompts, left padded, by incremental decoding."""
        import torch

        from ..models.model import InferenceState

        width = max(len(p) for p in prompts)
        ids = torch.tensor([[eos] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long,
                           device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.bool,
                            device=self.device)
        state = InferenceState()
        state.set_padding(mask)
        h = self._stage(ids, state)
        rows: List[List[int]] = [[] for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool, device=self.device)
        for step in range(new_tokens):
            token = self._logits(h[-1:])[0].argmax(-1) if self.last else None
            token = self._share(token, (len(prompts),), torch.long)
            for row, t in zip(rows, token.tolist()):
                row.append(t)
            done |= token == eos
            if step + 1 == new_tokens or bool(done.all()):
                break
            h = self._stage(token[:, None], state)
        return rows


# --- inside a world --------------------------------------------------------------------------------

def evaluate_in_world(run_dir, tasks: Optional[Iterable[str]] = None, overrides: Sequence[str] = (),
                      progress: bool = True) -> List[Path]:
    """Every rank of a tp x pp world (torch.distributed and megatron's parallel state set up, at
    the run's layout) evaluates the run's latest checkpoint; rank 0 writes the results files.
    Returns them (on every rank)."""
    import torch
    from megatron.core import parallel_state as ps

    from ..hf.convert import load_tokenizer, load_weights, read_checkpoint, build_megatron
    from .harness import EvalError, _setup, TaskTokenizer, _todo, run_jobs

    run_dir = Path(run_dir)
    recipe, jobs, source = _setup(run_dir, tasks, overrides)
    tp, pp = run_layout(recipe)
    have = (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size())
    if have != (tp, pp) or torch.distributed.get_world_size() != tp * pp:
        raise EvalError(f"{run_dir}: the run's layout is TP={tp} x PP={pp} ({tp * pp} processes); this world "
                        f"has {torch.distributed.get_world_size()} processes at TP={have[0]} x PP={have[1]}")
    rank0 = torch.distributed.get_rank() == 0
    todo = [_todo(jobs, source, progress and rank0)]
    torch.distributed.broadcast_object_list(todo, src=0)  # one decision: rank 0 writes the files
    todo = todo[0]
    if not todo:
        return [j.path for j in jobs]
    ckpt = read_checkpoint(source)
    tok = load_tokenizer(ckpt.recipe, ckpt.vocab_size, None, source.run_dir)
    if progress and rank0:
        print(f"swax eval: loading {source.checkpoint} (step {source.step}) at TP={tp} x PP={pp}",
              file=sys.stderr, flush=True)
    model = build_megatron(ckpt.recipe, ckpt.vocab_size, tp=tp, pp=pp)
    load_weights(model, source.checkpoint)
    run_jobs(MegatronBackend(model), TaskTokenizer(tok), recipe, run_dir, source, todo,
             progress and rank0, write=rank0)
    return [j.path for j in jobs]


def _world_then(run_dir, tasks, overrides, progress, tp: int, pp: int) -> List[Path]:
    """This process is one rank of a launched world (srun, torchrun, or evaluate_at_run_layout's
    workers): set it up at (tp, pp), evaluate, tear it down."""
    from ..hf.convert import DEFAULT_SEED, quiet
    from ..parallel import cpu_compat
    from ..training.distributed import detect, init_model_parallel, init_process_group, teardown

    quiet()
    cpu_compat.apply()
    init_process_group(detect())
    try:
        init_model_parallel(tp, pp, DEFAULT_SEED)
        return evaluate_in_world(run_dir, tasks, overrides, progress)
    finally:
        teardown()


# --- launching ------------------------------------------------------------------------------------

def evaluate_at_run_layout(run_dir, tasks: Optional[Iterable[str]] = None, overrides: Sequence[str] = (),
                           progress: bool = True) -> List[Path]:
    """harness.evaluate_run(layout="run"): bad input is refused here, before any process starts;
    then the ranks srun / torchrun gave, this process (TP = PP = 1), or tp x pp local workers.
    Returns the results files (on rank 0; [] on the other ranks of a launched world)."""
    from ..hf.convert import DEFAULT_SEED
    from ..training.distributed import detect, single_process_world
    from .harness import EvalError, _setup, _todo

    run_dir = Path(run_dir)
    recipe, jobs, source = _setup(run_dir, tasks, overrides)
    tp, pp = run_layout(recipe)
    world = tp * pp
    d = detect()
    if d.world_size > 1:  # srun / torchrun started the ranks
        if d.world_size != world:
            raise EvalError(f"{run_dir}: the run's layout is TP={tp} x PP={pp}, {world} process(es); this "
                            f"job has {d.world_size} (srun --ntasks / torchrun --nproc-per-node {world})")
        paths = _world_then(run_dir, tasks, overrides, progress and d.rank == 0, tp, pp)
        return paths if d.rank == 0 else []
    if world == 1:
        from ..hf.convert import quiet

        quiet()
        with single_process_world(DEFAULT_SEED):
            return evaluate_in_world(run_dir, tasks, overrides, progress)
    if not _todo(jobs, source, False):  # nothing to do: no processes to start
        _todo(jobs, source, progress)  # say what is skipped (else rank 0 says it)
        return [j.path for j in jobs]
    argv = [str(run_dir), *(["--tasks", ",".join(tasks)] if tasks is not None else []),
            *(["--quiet"] if not progress else []), *overrides]
    if progress:
        print(f"swax eval: {world} processes at the run's layout TP={tp} x PP={pp}", file=sys.stderr, flush=True)
    code = launch_workers(world, argv)
    if code != 0:
        raise EvalError(f"evaluation at TP={tp} x PP={pp} failed: a worker exited with code {code} "
                        f"(its error is above)")
    return [j.path for j in jobs]


def launch_workers(nproc: int, argv: Sequence[str]) -> int:
    """`python -m swax_megatron.eval.layout ARGV` as nproc local ranks (torchrun's variables);
    the first failing worker's exit code (the others killed GRACE_SECONDS later), else 0. A
    SIGTERM to this process kills the workers and exits 143."""
    from ..training.distributed import free_port
    from ..training.launch import combine_exit_codes

    def stop(signum, frame):  # noqa: ARG001 - SIGTERM (slurm/eval.sh, scancel): the workers go too
        raise SystemExit(128 + signum)

    port, cores = str(free_port()), os.cpu_count() or 1
    procs = []
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        for rank in range(nproc):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                       LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
            procs.append(subprocess.Popen([sys.executable, "-m", "swax_megatron.eval.layout", *argv], env=env))
        failed_at = None
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > GRACE_SECONDS:
                break
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    return combine_exit_codes([p.returncode for p in procs])


def main(argv: Optional[List[str]] = None) -> int:
    """One worker rank (started by launch_workers): RUN_DIR [--tasks a,b] [--quiet] [eval.k=v ...]."""
    import argparse

    parser = argparse.ArgumentParser(prog="swax eval (layout worker)")
    parser.add_argument("run_dir")
    parser.add_argument("--tasks")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--world", action="store_true",
                        help="print the run's TP x PP (its number of ranks) and exit (slurm/eval.sh)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    tasks = None if args.tasks is None else [t for t in args.tasks.split(",") if t]
    from ..cliutil import error_line

    if args.world:  # light: no megatron
        from ..config.errors import RecipeError
        from ..config.resolve import resolve

        if not (Path(args.run_dir) / "resolved.yaml").is_file():
            return error_line("swax eval", ValueError(f"{args.run_dir}: not a run directory (no resolved.yaml)"))
        try:
            tp, pp = run_layout(resolve(str(Path(args.run_dir) / "resolved.yaml")).recipe)
        except RecipeError as e:
            return error_line("swax eval", e)
        print(tp * pp)
        return 0
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from ..training.distributed import detect
    from .harness import _setup, bad_input_errors

    try:
        recipe, _, _ = _setup(Path(args.run_dir), tasks, args.overrides)
        tp, pp = run_layout(recipe)
        _world_then(args.run_dir, tasks, args.overrides, not args.quiet and detect().rank == 0, tp, pp)
    except bad_input_errors() as e:
        return error_line(f"swax eval (rank {detect().rank})", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
