"""What a run logs while it trains: metrics.jsonl rows (and TensorBoard events when installed), and the
throughput between two logs."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from goushi import rundir


class MetricsLog:
    """Rows of RUN_DIR/metrics.jsonl. Only the writing process (rank 0) passes enabled=True."""

    def __init__(self, run_dir: str | Path, *, enabled: bool, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if resume_step is not None:
            # What was logged after the checkpoint we resume from is logged again when those steps rerun.
            rundir.truncate_metrics(self.run_dir, resume_step)
        else:
            (self.run_dir / rundir.METRICS).unlink(missing_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
        except ImportError:
            return  # metrics.jsonl has everything
        self.tb = SummaryWriter(str(self.run_dir / rundir.TENSORBOARD))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rundir.append_metrics(self.run_dir, row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, row["step"])

    def rows(self) -> list[dict[str, Any]]:
        return rundir.read_metrics(self.run_dir) if self.enabled else []

    def median_tokens_per_s(self) -> float | None:
        rates = [r["tokens_per_s"] for r in self.rows() if isinstance(r.get("tokens_per_s"), (int, float))]
        return float(statistics.median(rates)) if rates else None

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class Throughput:
    """Tokens per second since the last reading, not counting time spent elsewhere (evaluation)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def exclude(self, seconds: float) -> None:
        self.t0 += seconds

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.tokens / dt if dt > 0 else 0.0


__all__ = ["MetricsLog", "Throughput"]
