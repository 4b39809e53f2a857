"""The search loop, in parts: set up (or resume), one step per protocol, one epoch, the checkpoint.

Randomness is re-derived from (seed, epoch, rank) at the start of every epoch
rather than carried in the checkpoint: resuming at an epoch boundary then
replays exactly what an uninterrupted run would have done. A mid-epoch checkpoint
also holds the RNG states and the position in the epoch, whose batch order is a
function of (seed, epoch): the resume skips the batches used and goes on exactly.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dartscc_fast.nn.primitives import OP_TYPES
from dartscc_fast.progress import Progress
from dartscc_fast.search.checkpoint import (
    CheckpointError,
    checkpoint_part,
    load_checkpoint,
    save_checkpoint,
    table_digest,
)
from dartscc_fast.search.config import SearchConfig
from dartscc_fast.search.distributed import claim, dist_info, epoch_loader, init_distributed, seed_for
from dartscc_fast.search.hypernet import parse_S, sample_S
from dartscc_fast.search.log import SearchLog
from dartscc_fast.search.model import SearchModel, build_model, latency_table_for, latency_term, optimizers, supernet_L
from dartscc_fast.search.result import CHECKPOINT, CHECKPOINT_KEYS
from dartscc_fast.search.schedules import cosine_lr, draw_strength, free_op_dropout_at, temperature
from dartscc_fast.validate import first_nonfinite

__all__ = ["run_search", "NonFiniteError"]

#: Settings a resumed search may change: they alter no step of the search. The latency table's path may move
#: with its run directory: its contents are checked by digest.
RESUMABLE_CHANGES = ("epochs", "out_dir", "progress", "log", "checkpoint_every", "latency_table")
#: How the latency term prices ops: no step of a search without one (kappa 0, no strength axis: the DARTS
#: baseline) depends on them, so its checkpoint serves a run that prices otherwise.
LATENCY_PRICING = ("normalise", "stride_balance")


class NonFiniteError(ValueError):
    """A search met a NaN or inf (in its loss, gradients or parameters) and stopped."""


def run_search(cfg: SearchConfig, resume: bool = False, stop_after_epochs: Optional[int] = None,
               loaders=None, table=None, on_step: Optional[Callable[[Dict], None]] = None,
               force: bool = False) -> Path:
    """Run (or, with ``resume``, continue) a search; returns the checkpoint path.

    See :func:`search` for the arguments.
    """
    return search(cfg, resume, stop_after_epochs, loaders, table, on_step, force)[0]


def search(cfg: SearchConfig, resume: bool = False, stop_after_epochs: Optional[int] = None,
           loaders=None, table=None, on_step: Optional[Callable[[Dict], None]] = None,
           force: bool = False) -> Tuple[Path, SearchModel]:
    """The search; returns the checkpoint path and the trained model.

    Args:
        resume: continue from ``<out_dir>/checkpoint.pt`` if it exists.
        stop_after_epochs: stop after this many epochs in total (an interruption, for tests).
        loaders: ``datasets.make_loaders`` output to reuse (else built from cfg).
        table: a LatencyTable to reuse (else :func:`latency_table_for`).
        force: start afresh in an ``out_dir`` that holds a search (without it: RunDirError), or, with
            ``resume``, continue with a latency table other than the checkpoint's.

    ``out_dir`` is locked for the run (:func:`dartscc_fast.search.rundir.claim_run_dir`): a second search into it
    fails at once. A NaN or inf in the loss, the gradients or the parameters stops the search with a
    :class:`NonFiniteError`, before it overwrites the last good checkpoint.
    """
    created_pg = init_distributed()
    rank, world = dist_info()
    out = Path(cfg.out_dir)
    try:
        lock = claim(out, resume, force, rank, world)
    except BaseException:
        if created_pg:
            dist.destroy_process_group()
        raise
    try:
        run = _SearchRun(cfg, out, rank, world, loaders, table, on_step)
        try:
            if resume and run.ck_path.is_file():
                run.resume(force)
            run.train(stop_after_epochs)
        finally:
            if created_pg:
                dist.destroy_process_group()
        return run.ck_path, run.model
    finally:
        lock.release()


class _SearchRun:
    """One search's state: data, latency, model, optimisers, where it stands, and its log."""

    def __init__(self, cfg: SearchConfig, out: Path, rank: int, world: int, loaders, table,
                 on_step: Optional[Callable[[Dict], None]]):
        self.cfg, self.out, self.rank, self.world, self.on_step = cfg, out, rank, world, on_step
        self.space = cfg.get_space()
        loaders = cfg.loaders() if loaders is None else loaders
        self.train_ds, self.val_ds, self.split = loaders.train.dataset, loaders.val.dataset, loaders.split
        self.table = latency_table_for(cfg, self.space) if table is None else table
        self.L_ms, self.L = supernet_L(self.table, self.space, cfg)
        self.type_index = self.space.type_index().tolist()
        self.fixed_S = parse_S(cfg.fixed_S) if cfg.fixed_S else None
        self.model = build_model(cfg, self.space, L=self.L)
        self.opt_w, self.opt_a = optimizers(cfg, self.model)
        self.start_epoch, self.step, self.history, self.seconds = 0, 0, [], 0.0
        self.ck_path = out / CHECKPOINT
        self.digest = table_digest(self.table.to_dict())
        self.mid: Optional[Dict] = None  # a mid-epoch checkpoint's place: {"position", "sums", "rng"}
        self.last_saved: Optional[int] = None  # the step of the last good checkpoint
        self.epoch = 0

    # --------------------------------------------------------------------------- resume
    def resume(self, force: bool) -> None:
        """Take up the checkpoint in ``out``: weights, optimisers, position (checked against this search)."""
        cfg, ck_path = self.cfg, self.ck_path
        ck = load_checkpoint(ck_path, required=CHECKPOINT_KEYS + ("opt_w", "opt_a"))
        with checkpoint_part(ck_path, "its settings are not valid for this dartscc_fast"):
            saved = SearchConfig.from_dict(ck["config"])
        free = RESUMABLE_CHANGES + (LATENCY_PRICING if not cfg.strength and not cfg.kappa else ())
        mismatch = [f.name for f in dataclasses.fields(cfg)
                    if f.name not in free and getattr(saved, f.name) != getattr(cfg, f.name)]
        if mismatch:
            raise ValueError(f"--resume: {ck_path} was written by a search with other settings "
                             f"({', '.join(mismatch)}); use another --out or the same settings")
        with checkpoint_part(ck_path, "its latency table does not load"):
            saved_digest = ck.get("latency_digest") or table_digest(ck["latency_table"])
        if saved_digest != self.digest and not force:
            raise ValueError(f"--resume: the latency table ({cfg.latency_table or 'simulated'}) is not the one "
                             f"{ck_path} was trained with (sha256 {saved_digest[:12]}... then, {self.digest[:12]}... "
                             "now); resume with that table, or add --force to go on with this one")
        with checkpoint_part(ck_path, "its weights or optimiser states do not fit this search"):
            self.model.supernet.load_state_dict(ck["model"]["supernet"])
            self.model.hypernet.load_state_dict(ck["model"]["hypernet"])
            self.opt_w.load_state_dict(ck["opt_w"])
            self.opt_a.load_state_dict(ck["opt_a"])
        self.start_epoch, self.step, self.history = ck["epoch"], ck["step"], ck["history"]
        self.seconds = ck.get("seconds", 0.0)
        self.last_saved = self.step
        if ck.get("position"):
            self.mid = {"position": ck["position"], "sums": ck["sums"], "rng": ck["rng"]}
            if len(self.mid["rng"]) != self.world:
                raise CheckpointError(ck_path, f"written mid-epoch by {len(self.mid['rng'])} processes; resume it "
                                               f"with as many (not {self.world}), or from the end of an epoch")

    # ----------------------------------------------------------------------------- steps
    def draw_S(self, gen: torch.Generator, n: int) -> Tensor:
        if self.fixed_S is not None:
            return self.fixed_S if not self.cfg.per_sample else self.fixed_S.expand(n, -1)
        return sample_S(len(OP_TYPES), n if self.cfg.per_sample else None, gen)

    def loss_on(self, x, y, gen, tau, warm: bool, accurate_end: bool = False) -> Tuple[Tensor, Dict]:
        """CE + kappa * Lat_S(gamma) of one batch, for S, t and gamma drawn from ``gen`` (t = 0 with
        ``accurate_end``)."""
        cfg, L, ti = self.cfg, self.L, self.type_index
        S = self.draw_S(gen, x.shape[0])
        t = draw_strength(cfg, gen, x.shape[0])
        if accurate_end:
            t = torch.zeros_like(t)
        seeds = torch.randint(0, 2 ** 62, (2,), generator=gen)
        p = free_op_dropout_at(cfg, self.epoch)
        # drawn only when on, so that a search without it keeps the random stream it always had
        u = torch.rand((x.shape[0],) * cfg.per_sample + (self.L.shape[0],), generator=gen) if p > 0 else None
        logits, gamma, alpha = self.ddp(x, S, tau, cfg.hard, seeds, warm, t, u, p)
        ce = F.cross_entropy(logits, y)
        lat_each = latency_term(gamma, L, S, ti)
        kappa = cfg.kappa_at(t) if t is not None else cfg.kappa
        lat = lat_each.mean()
        loss = ce + (kappa * lat_each).mean() if not warm and (t is not None or cfg.kappa) else ce + 0.0 * lat
        with torch.no_grad():
            exp_lat = latency_term(alpha.softmax(-1), L, S, ti).mean()
            acc = (logits.argmax(1) == y).float().mean()
        return loss, {"loss": loss.item(), "ce": ce.item(), "lat": lat.item(), "exp_lat": exp_lat.item(),
                      "acc": acc.item()}

    def backward(self, x, y, gen, tau, warm: bool) -> Tuple[Tensor, Dict]:
        """The batch's loss, backpropagated; with the sandwich rule (after the warm-up) the accurate end's too,
        on the same batch, so that both join the one update. Returns the (summed) loss and the first's stats."""
        loss, stats = self.loss_on(x, y, gen, tau, warm)
        loss.backward()
        if self.cfg.sandwich and not warm:
            # a forward and backward of its own, so that DDP sees one forward per backward
            loss0, _ = self.loss_on(x, y, gen, tau, False, accurate_end=True)
            loss0.backward()
            loss = loss.detach() + loss0.detach()
        return loss, stats

    def single_step(self, x, y, gen, tau, warm: bool) -> Dict:
        """The seeds' single-level step: one batch updates the weights and (after the warm-up) the hypernet."""
        self.opt_w.zero_grad(set_to_none=True)
        self.opt_a.zero_grad(set_to_none=True)
        loss, stats = self.backward(x, y, gen, tau, warm)
        self.check_step(loss, nn.utils.clip_grad_norm_(self.model.supernet.parameters(), self.cfg.grad_clip))
        self.opt_w.step()
        if not warm:
            self.opt_a.step()
        return stats

    def bilevel_step(self, x, y, gen, tau) -> Dict:
        """DARTS's first-order step: the hypernet on a validation batch, then the weights on ``x``."""
        xv, yv = self.next_val()
        self.opt_a.zero_grad(set_to_none=True)
        loss_a, _ = self.backward(xv, yv, gen, tau, False)
        self.check_step(loss_a)
        self.opt_a.step()
        self.opt_w.zero_grad(set_to_none=True)
        loss, stats = self.backward(x, y, gen, tau, False)
        self.check_step(loss, nn.utils.clip_grad_norm_(self.model.supernet.parameters(), self.cfg.grad_clip))
        self.opt_w.step()
        return stats

    def next_val(self):
        """The next validation batch; a fresh order (keyed by the step) once the split runs out."""
        try:
            batch = next(self.val_iter)
        except StopIteration:
            self.val_key, self.val_pos = self.epoch + 1000 * self.step, 0
            self.val_iter = iter(epoch_loader(self.val_ds, self.cfg, self.val_key, self.rank, self.world, 4))
            batch = next(self.val_iter)
        self.val_pos += 1
        return batch

    # --------------------------------------------------------------------------- guards
    def stop(self, what: str, updated: bool = False) -> None:
        cfg = self.cfg
        kappa = f"kappa {cfg.kappa:g}" + (f", kappa_max {cfg.kappa_max:g}" if getattr(cfg, "strength", False) else "")
        kept = (f"the last good checkpoint, {self.ck_path} (step {self.last_saved}), is kept"
                if self.last_saved is not None else "no checkpoint had been written yet")
        raise NonFiniteError(
            f"search stopped at step {self.step} (epoch {self.epoch + 1}): {what} "
            f"{'after the update' if updated else '(the weights were not updated with it)'}. Likely causes: a "
            f"learning rate too high (lr_w {cfg.lr_w:g}, lr_a {cfg.lr_a:g}), too strong a latency term ({kappa}), "
            f"too loose a gradient clip (grad_clip {cfg.grad_clip:g}), or NaN in the data; {kept}")

    def check_step(self, loss: Tensor, grad_norm: Optional[Tensor] = None) -> None:
        # after backward (on every process alike: DDP has averaged the gradients), before the update
        if not math.isfinite(float(loss.detach())):
            self.stop(f"the loss is {float(loss.detach())}")
        if grad_norm is not None and not torch.isfinite(grad_norm):
            self.stop(f"the gradient norm is {float(grad_norm)}")

    # ----------------------------------------------------------------------- checkpoint
    def save(self, epoch_done: int, position: int, sums: Dict[str, float], rng: Optional[Dict]) -> None:
        """The checkpoint after ``epoch_done`` epochs and ``position`` steps of the next (with every
        process's RNG states and the epoch's running sums when mid-epoch); then the log up to it."""
        rngs = None
        if rng is not None:
            rngs = [rng]
            if self.world > 1:
                rngs = [None] * self.world
                dist.all_gather_object(rngs, rng)
        if self.rank == 0:
            m = self.model
            save_checkpoint({
                "config": self.cfg.to_dict(), "space": self.space.to_dict(),
                "hypernet_config": m.hypernet.config(),
                "model": {"supernet": m.supernet.state_dict(), "hypernet": m.hypernet.state_dict()},
                "opt_w": self.opt_w.state_dict(), "opt_a": self.opt_a.state_dict(),
                "epoch": epoch_done, "step": self.step, "position": position, "sums": dict(sums), "rng": rngs,
                "history": self.history, "seconds": time.perf_counter() - self.t_start,
                "L_ms": self.L_ms, "L": self.L, "latency_table": self.table.to_dict(), "latency_digest": self.digest,
                "split": self.split.as_dict(), "world_size": self.world,
                "finished": position == 0 and epoch_done == self.cfg.epochs,
            }, self.ck_path)
            self.log.flush()
        self.last_saved = self.step

    # --------------------------------------------------------------------------- epochs
    def train(self, stop_after_epochs: Optional[int]) -> None:
        """Every epoch from where the search stands to ``epochs`` (or ``stop_after_epochs``)."""
        cfg = self.cfg
        self.ddp = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=True)
        steps = len(epoch_loader(self.train_ds, cfg, 0, self.rank, self.world, 1))
        if cfg.max_steps_per_epoch is not None:
            steps = min(steps, cfg.max_steps_per_epoch)
        if steps == 0:
            raise ValueError(f"the train split ({self.split}) has fewer images than one batch of {cfg.batch_size} "
                             f"per process; lower --batch-size or raise --limit")
        self.steps_per_epoch, self.total_steps = steps, steps * cfg.epochs
        self.warm_steps = steps * min(cfg.warmup_epochs, cfg.epochs - 1)
        end_epoch = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, stop_after_epochs)
        self.log = SearchLog(cfg, self.out, self.step, enabled=self.rank == 0)
        self.t_start = time.perf_counter() - self.seconds
        try:
            for epoch in range(self.start_epoch, end_epoch):
                self.run_epoch(epoch)
        finally:
            self.log.close()

    def start_epoch_streams(self, epoch: int) -> Tuple[torch.Generator, int, Dict[str, float]]:
        """The epoch's seeded generator and batch iterators; at a mid-epoch checkpoint, its place and sums."""
        cfg, rank, world = self.cfg, self.rank, self.world
        gen = torch.Generator().manual_seed(seed_for(cfg.seed, epoch, rank, 2))
        torch.manual_seed(seed_for(cfg.seed, epoch, rank, 3))
        self.train_iter = iter(epoch_loader(self.train_ds, cfg, epoch, rank, world, 1))
        self.val_key, self.val_pos = epoch, 0  # the validation batches' order, and how many of them were used
        self.val_iter = (iter(epoch_loader(self.val_ds, cfg, epoch, rank, world, 4)) if cfg.protocol == "bilevel"
                         else None)
        if self.mid is None or epoch != self.start_epoch:
            return gen, 0, {}
        # the epoch's batches are a function of (seed, epoch): skip those used, then take up the RNG states
        # saved (last: making the iterators drew from torch's)
        first, sums = self.mid["position"], dict(self.mid["sums"])
        for _ in range(first):
            next(self.train_iter)
        rng = self.mid["rng"][rank]
        if self.val_iter is not None:
            self.val_key, self.val_pos = rng["val_key"], rng["val_pos"]
            self.val_iter = iter(epoch_loader(self.val_ds, cfg, self.val_key, rank, world, 4))
            for _ in range(self.val_pos):
                next(self.val_iter, None)
        gen.set_state(rng["gen"])
        torch.set_rng_state(rng["torch"])
        return gen, first, sums

    def run_epoch(self, epoch: int) -> None:
        cfg, steps = self.cfg, self.steps_per_epoch
        self.epoch = epoch
        self.model.train()
        gen, first, sums = self.start_epoch_streams(epoch)
        bar = Progress(total=steps, desc=f"search {epoch + 1}/{cfg.epochs}",
                       enabled=None if cfg.progress and self.rank == 0 else False)
        bar.update(first)
        warm = epoch < cfg.warmup_epochs
        tau = temperature(cfg, max(self.step - self.warm_steps, 0), self.total_steps - self.warm_steps)
        for i in range(first, steps):
            x, y = next(self.train_iter)
            tau = temperature(cfg, max(self.step - self.warm_steps, 0), self.total_steps - self.warm_steps)
            lr = cosine_lr(cfg, self.step, self.total_steps)
            for g in self.opt_w.param_groups:
                g["lr"] = lr
            if cfg.protocol == "bilevel" and not warm:
                stats = self.bilevel_step(x, y, gen, tau)
            else:
                stats = self.single_step(x, y, gen, tau, warm)
            bad = first_nonfinite(self.model.named_parameters())
            if bad is not None:
                self.stop(f"parameter {bad} is not finite", updated=True)
            row = {"epoch": epoch, "step": self.step, **stats, "tau": tau, "lr_w": lr,
                   "seconds": time.perf_counter() - self.t_start}
            self.log.write(row)
            if self.on_step is not None:
                self.on_step(row)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            self.step += 1
            bar.set(loss=stats["loss"], acc=stats["acc"], lat=stats["exp_lat"], tau=tau)
            bar.update()
            if cfg.checkpoint_every is not None and self.step % cfg.checkpoint_every == 0 and i + 1 < steps:
                self.save(epoch, i + 1, sums, {"gen": gen.get_state(), "torch": torch.get_rng_state(),
                                               "val_key": self.val_key, "val_pos": self.val_pos})
        bar.close()
        self.end_epoch(epoch, sums, tau)

    def end_epoch(self, epoch: int, sums: Dict[str, float], tau: float) -> None:
        self.history.append({"epoch": epoch, **{k: v / self.steps_per_epoch for k, v in sums.items()},
                             "tau": tau, "seconds": time.perf_counter() - self.t_start})
        if self.world > 1:
            # DDP syncs buffers at the start of each forward, so after the last step the
            # replicas' BatchNorm statistics differ: take rank 0's, as the next forward would
            for b in self.model.buffers():
                dist.broadcast(b, 0)
        self.save(epoch + 1, 0, {}, None)
        if self.world > 1:
            dist.barrier()


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: Dict, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = SearchConfig.from_dict(cfg_dict)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _, model = search(cfg)
        # every rank saves what it holds, so the replicas can be compared
        torch.save(model.state_dict(), Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn_ddp(cfg: SearchConfig, world: int = 2, port: int = 29533) -> None:
    """Run a search in `world` CPU processes (gloo) with torch.multiprocessing; as torchrun would."""
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(world, port, cfg.to_dict(), cfg.out_dir), nprocs=world, join=True)
