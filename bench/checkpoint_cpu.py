"""Cost of the run-integrity machinery (issue 10): prints JSON rows, then ratios.

    python bench/checkpoint_cpu.py                 # hidden 512, XS*4 (about 25M parameters)
    python bench/checkpoint_cpu.py --hidden 1024 --repeats 5

In one process (gloo, world 1), a SWAX model built by the real trainer's engine takes one AdamW
step (so the checkpoint holds the optimizer moments), then, interleaved repeat by repeat:
  save_without_manifest  CheckpointManager.save with the manifest and the writers' checksums
                         switched off (what a save cost before the manifest existed)
  save                   CheckpointManager.save as the trainer runs it (shards + CRC-32
                         manifest + `latest`)
  verify                 checkpoint.manifest_problem: re-reading and checksumming every file, what a
                         resume does once before loading
  lock                   RunLock.acquire + release on a run directory (once per job; nothing
                         is done per step)
  save_sync_blocked      checkpoint.async_save=false: the trainer waits for the whole save
  save_async_blocked     checkpoint.async_save=true: what the trainer waits for: save() (state
                         dict, common.pt, fork of the writer) plus each step boundary's
                         finalize() until the save completed (the last one writes the manifest
                         and moves `latest`); training steps run meanwhile
  save_async_start /     the two parts of save_async_blocked
  save_async_finalize
  save_async_complete    from save() to `latest` moved (the steps in between included)
  step / step_in_flight  a training step alone, and while the writer runs (they share the cores)
Min and median over the repeats; the ratio uses the minima.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchutil import cpu_model, emit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cpu import REPO, init_single_process  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--pattern", default="XS*4")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    init_single_process(seed=1)

    from swax_megatron.config.resolve import resolve
    from swax_megatron.training import checkpoint as ck
    from swax_megatron.training.checkpoint import CheckpointManager, TrainState
    from swax_megatron.training.engine import build_engine, train_step
    from swax_megatron.training.rundir import RunLock

    layers = len(args.pattern.split("*")[0]) * int(args.pattern.split("*")[1])
    recipe = resolve(str(REPO / "recipes/tiny/swax.yaml"), [
        f"model.hidden_size={args.hidden}", f"model.layer_pattern={args.pattern}",
        f"model.num_layers={layers}", "train.seq_length=128", "train.micro_batch_size=1",
        "train.global_batch_size=1", "slurm.gpus_per_node=1"]).recipe
    engine = build_engine(recipe, 2048, torch.device("cpu"))
    tokens = torch.randint(0, 2048, (1, 129))
    batch = [{"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(1, 128)}]
    train_step(engine, batch, window=32, lr=1e-4, weight_decay=0.1)
    params = sum(p.numel() for p in engine.model.parameters())

    def step_once() -> float:
        t0 = time.perf_counter()
        train_step(engine, batch, window=32, lr=1e-4, weight_decay=0.1)
        return time.perf_counter() - t0

    real_manifest, real_digest = ck.write_manifest, ck.file_digest
    times = {k: [] for k in ("save_without_manifest", "save", "verify", "lock",
                             "save_sync_blocked", "save_async_blocked", "save_async_start",
                             "save_async_finalize", "save_async_complete",
                             "step", "step_in_flight")}
    steps_in_flight = []
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        manager = CheckpointManager(Path(tmp) / "checkpoints", keep_last=1)
        asynchronous = CheckpointManager(Path(tmp) / "async", keep_last=1, async_save=True)
        step = 0
        size = 0
        for _ in range(args.repeats):
            for name in ("save_without_manifest", "save"):
                bare = name == "save_without_manifest"  # no checksums in the writer either
                ck.write_manifest = (lambda path: None) if bare else real_manifest
                ck.file_digest = (lambda path: {}) if bare else real_digest
                step += 1
                t0 = time.perf_counter()
                path, why = manager.save(step, engine.model, engine.optimizer, TrainState(step=step),
                                         {"config_hash": "bench"})
                times[name].append(time.perf_counter() - t0)
                assert path is not None, why
            size = sum(f.stat().st_size for f in path.iterdir())
            t0 = time.perf_counter()
            assert ck.manifest_problem(path) is None
            times["verify"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            RunLock.acquire([Path(tmp) / "run"]).release()
            times["lock"].append(time.perf_counter() - t0)
            times["step"].append(step_once())

            # Synchronous against asynchronous, as the Checkpointer drives them.
            step += 1
            t0 = time.perf_counter()
            manager.save(step, engine.model, engine.optimizer, TrainState(step=step), {})
            assert manager.finalize()[-1] == manager.root / ck.iter_name(step)
            times["save_sync_blocked"].append(time.perf_counter() - t0)
            step += 1
            t0 = time.perf_counter()
            path, why = asynchronous.save(step, engine.model, engine.optimizer,
                                          TrainState(step=step), {})
            assert path is not None, why
            start = time.perf_counter() - t0
            blocked, done, n, in_flight = start, [], 0, []
            while not done:
                in_flight.append(step_once())
                n += 1
                t1 = time.perf_counter()
                done = asynchronous.finalize(blocking=n >= 1000)
                blocked += time.perf_counter() - t1
            times["save_async_complete"].append(time.perf_counter() - t0)
            times["save_async_blocked"].append(blocked)
            times["save_async_start"].append(start)
            times["save_async_finalize"].append(blocked - start)
            times["step_in_flight"].append(statistics.median(in_flight))
            steps_in_flight.append(n)
        ck.write_manifest, ck.file_digest = real_manifest, real_digest

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for name, ts in times.items():
        emit({"what": name, "params": params, "checkpoint_bytes": size, "min_s": min(ts),
              "median_s": statistics.median(ts), "repeats": len(ts), "threads": args.threads,
              "cpu": cpu_model(), "torch": torch.__version__, "date": stamp})
    emit({"ratio": "save / save_without_manifest", "value": min(times["save"])
          / min(times["save_without_manifest"])})
    emit({"ratio": "manifest checksum MB/s", "value": size / 1e6 / max(
        1e-9, min(times["save"]) - min(times["save_without_manifest"]))})
    emit({"ratio": "blocked sync / async", "value": min(times["save_sync_blocked"])
          / min(times["save_async_blocked"]), "steps_while_in_flight": steps_in_flight})


if __name__ == "__main__":
    main()
