"""Rank-0 logging: progress bar, metrics.jsonl, TensorBoard, the loss plot, the summary.

metrics.jsonl has one JSON object per line:
    {"kind": "train", "step": 12, "loss": ..., "lr": ..., "window": 32, "grad_norm": ...,
     "tokens_per_s": ..., "step_time_s": ..., "skipped": false, "flops_per_token": ..., "mfu": ...}
    {"kind": "eval", "step": 50, "val_loss": ..., "val_ppl": ..., "window": 128}
    {"kind": "checkpoint", "step": 100, "path": "...", "reason": "every_steps"}
    {"kind": "probe", "step": 50, "task": "passkey", "score": 25.0, "token_accuracy": ..., ...}
`step` counts optimizer steps done (1 after the first step); `window` is the SWA window the step
used. Floats are written exactly (repr), so two runs can be compared bitwise.

The file is append-only across attempts: each start of the trainer on the run directory first
appends {"kind": "attempt", "attempt": N, "start_step": S, ...}. Records of an earlier attempt past
S were lost with that attempt (not in any checkpoint); they stay in the file, and
`read_metrics` leaves them out of the run's history (`all_attempts=True` returns every line).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..files import atomic_write


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / Infinity
    return value


def read_metrics(path: str | os.PathLike, all_attempts: bool = False) -> List[Dict[str, Any]]:
    """The run's history: records of every attempt, less those an attempt that resumed from an
    earlier step superseded (see the module docstring); `all_attempts`: every record."""
    path = Path(path)
    if not path.is_file():
        return []
    out: List[Dict[str, Any]] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if not all_attempts and record.get("kind") == "attempt":
            start = record.get("start_step", 0)
            out = [r for r in out if r.get("kind") == "attempt" or r.get("step", 0) <= start]
        out.append(record)
    return out


class NullLogger:
    """What ranks other than 0 get: every call is a no-op."""

    def __getattr__(self, name):
        return lambda *a, **k: None


class RunLogger:
    """progress: "bar" (tqdm), "lines" (a plain line every `log_every` steps, what a batch
    job's log file wants), "auto" (bar on a terminal, else lines) or None."""

    def __init__(self, run_dir: str | os.PathLike, *, total_steps: int, start_step: int,
                 progress: Optional[str] = "auto", log_every: int = 1,
                 tensorboard: bool = True, attempt_info: Optional[Dict[str, Any]] = None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        earlier = read_metrics(self.metrics_path, all_attempts=True)
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        if self._file.tell() > 0 and not _ends_with_newline(self.metrics_path):
            self._file.write("\n")  # the last line was cut by a kill: start on a fresh one
        self.attempt = 1 + sum(1 for r in earlier if r.get("kind") == "attempt")
        self._write({"kind": "attempt", "attempt": self.attempt, "start_step": start_step,
                     **(attempt_info or {})})
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"),
                                        purge_step=start_step + 1 if start_step else None)
            except ImportError:  # tensorboard not installed: JSONL only
                self.tb = None
        self.bar = None
        self.total, self.log_every = total_steps, max(1, log_every)
        self.lines = progress == "lines" or (progress == "auto" and not sys.stderr.isatty())
        self._t0, self._step0 = time.monotonic(), start_step
        if progress in ("bar", "auto") and not self.lines:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5, smoothing=0.1)

    def _write(self, record: Dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def train(self, record: Dict[str, Any]) -> None:
        self._write({"kind": "train", **record})
        step = record["step"]
        if self.tb is not None:
            for key in ("loss", "lr", "window", "grad_norm", "tokens_per_s", "mfu"):
                value = record.get(key)
                if isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(f"train/{key}", value, step)
            self.tb.add_scalar("train/skipped", int(record.get("skipped", False)), step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(
                f"loss={record['loss']:.4f} lr={record['lr']:.2e} w={_w(record['window'])} "
                f"tok/s={record['tokens_per_s']:.0f}", refresh=False)
        elif self.lines and (step % self.log_every == 0 or step == self.total):
            rate = (step - self._step0) / max(1e-9, time.monotonic() - self._t0)
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            self.message(f"step {step}/{self.total} | loss {record['loss']:.4f} | lr "
                         f"{record['lr']:.2e} | window {_w(record['window'])} | "
                         f"{record['tokens_per_s']:,.0f} tok/s | ETA {_hms(eta)}")

    def eval(self, record: Dict[str, Any]) -> None:
        self._write({"kind": "eval", **record})
        if self.tb is not None:
            self.tb.add_scalar("val/loss", record["val_loss"], record["step"])
            self.tb.add_scalar("val/ppl", record["val_ppl"], record["step"])
        self.message(f"step {record['step']}: val loss {record['val_loss']:.4f} "
                     f"(ppl {record['val_ppl']:.2f}, window {_w(record['window'])})")

    def probe(self, record: Dict[str, Any]) -> None:
        """The recall probe (training/validator.py): {"step", "task", "samples", "probes",
        "length", "score", "token_accuracy" (percent), "window"}."""
        self._write({"kind": "probe", **record})
        if self.tb is not None and record.get("score") is not None:
            self.tb.add_scalar(f"probe/{record['task']}", record["score"], record["step"])
            self.tb.add_scalar(f"probe/{record['task']}_token_accuracy",
                               record["token_accuracy"], record["step"])
        if record.get("score") is not None:
            self.message(f"step {record['step']}: {record['task']} probe {record['score']:.1f}% "
                         f"({record['probes']} probes, answer tokens {record['token_accuracy']:.1f}%)")

    def checkpoint(self, record: Dict[str, Any]) -> None:
        self._write({"kind": "checkpoint", **record})
        self.message(f"step {record['step']}: checkpoint {record['path']} ({record['reason']})")

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        self._file.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _w(window) -> str:
    return "-" if window is None else str(window)  # models without S layers have no window


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def plot_losses(metrics_path: str | os.PathLike, out_path: str | os.PathLike,
                baselines: Optional[Dict[str, float]] = None) -> Optional[str]:
    """Train and validation loss against step into a PNG; returns why not if it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no loss plot (pip install matplotlib)"
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records
             if r.get("kind") == "train" and isinstance(r.get("loss"), float)]
    val = [(r["step"], r["val_loss"]) for r in records
           if r.get("kind") == "eval" and isinstance(r.get("val_loss"), float)]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot(*zip(*train), lw=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    for name, value in (baselines or {}).items():
        ax.axhline(value, ls="--", lw=0.8, color="gray")
        ax.annotate(name, (0, value), textcoords="offset points", xytext=(4, 3), fontsize=8,
                    color="gray", xycoords=("axes fraction", "data"))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(Path(metrics_path).parent.name, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = str(out_path) + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out_path)
    return None


def write_summary(path: str | os.PathLike, summary: Dict[str, Any]) -> None:
    atomic_write(path, json.dumps({k: _clean(v) for k, v in summary.items()}, indent=2)
                 + "\n")


def format_summary(s: Dict[str, Any]) -> str:
    def num(key, fmt):
        v = s.get(key)
        return "n/a" if v is None else format(v, fmt)

    lines = [
        "=" * 64,
        f"run            {s['run_dir']}",
        f"steps          {s['steps']} ({s['skipped_steps']} skipped NaN/Inf), "
        f"{s['tokens_trained']:,} tokens",
        f"val loss       {num('val_loss', '.4f')} nats/token  (perplexity {num('val_ppl', '.2f')},"
        f" window {_w(s.get('eval_window'))})",
        f"unigram        {num('unigram_entropy_valid', '.4f')} nats/token (entropy of the "
        f"validation tokens); {num('unigram_xent_train', '.4f')} (train unigram)",
        f"throughput     {num('tokens_per_s', ',.0f')} tokens/s over {s['world_size']} "
        f"process(es); {num('train_flops_per_token', '.3g')} train FLOPs/token; "
        f"MFU {num('mfu', '.1%')}",
        f"wall time      {num('wall_seconds', '.1f')} s this job",
        f"checkpoint     {s.get('checkpoint') or 'none'}",
        "=" * 64,
    ]
    return "\n".join(lines)
