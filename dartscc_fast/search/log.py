"""The search's log: CSV or TensorBoard rows, never ahead of the checkpoint."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List

from dartscc_fast.search.config import SearchConfig


class SearchLog:
    FIELDS = ["epoch", "step", "loss", "ce", "lat", "exp_lat", "acc", "tau", "lr_w", "seconds"]

    def __init__(self, cfg: SearchConfig, out: Path, resume_step: int, enabled: bool):
        """The log of a search. Rows are held until :meth:`flush`, which the loop calls after each
        checkpoint: the log never runs ahead of the checkpoint (nor exists before the first one), so a
        resume, which replays the steps after it, never finds them logged twice."""
        self.kind = cfg.log if enabled else "none"
        self.out, self.resume_step = out, resume_step
        self.csv_path = out / "log.csv"
        self.writer = None
        self.kept: List[Dict] = []      # the rows before the checkpoint resumed from
        self.pending: List[Dict] = []   # the rows since the last checkpoint
        if self.kind == "csv":
            if resume_step > 0 and self.csv_path.is_file():
                with open(self.csv_path) as f:
                    self.kept = [r for r in csv.DictReader(f) if int(r["step"]) < resume_step]
        elif self.kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError as e:
                raise ValueError("log='tensorboard' needs the tensorboard package (pip install tensorboard); "
                                 "or use log='csv'") from e

    def _open(self) -> None:
        if self.kind == "csv":
            self.file = open(self.csv_path, "w", newline="")
            self.writer = csv.DictWriter(self.file, self.FIELDS)
            self.writer.writeheader()
            self.writer.writerows(self.kept)
        else:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.resume_step)

    def write(self, row: Dict) -> None:
        if self.kind != "none":
            self.pending.append(row)

    def flush(self) -> None:
        """Write the rows held so far (after a checkpoint that covers them)."""
        if self.kind == "none":
            return
        if self.writer is None:
            self._open()
        for row in self.pending:
            if self.kind == "csv":
                self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            else:
                for k, v in row.items():
                    if k not in ("epoch", "step"):
                        self.writer.add_scalar(f"search/{k}", v, row["step"])
        self.pending.clear()
        if self.kind == "csv":
            self.file.flush()
        else:
            self.writer.flush()

    def close(self) -> None:
        # rows after the last checkpoint are dropped: a resume from it replays and logs them
        if self.writer is None:
            return
        if self.kind == "csv":
            self.file.close()
        else:
            self.writer.close()
