"""Run directories: no run overwritten by accident, one writer at a time, a log that never runs ahead of the
checkpoint, no temporary files left, a latency table that cannot change under a resume, and a search that
stops at the first NaN keeping its last good checkpoint."""
import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from dartscc_fast import cli
from dartscc_fast.search import NonFiniteError, SearchConfig, latency_table_for, load_search, run_search
from dartscc_fast.search.checkpoint import load_checkpoint
from dartscc_fast.search.rundir import RunDirError, RunLock, claim_run_dir

TINY = SearchConfig(space_overrides={"C": 4}, limit=300, epochs=1, warmup_epochs=0, batch_size=16,
                    max_steps_per_epoch=2, progress=False)
CLI_TINY = ["--channels", "4", "--limit", "300", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "16",
            "--max-steps-per-epoch", "2"]


def _crash_at(step):
    def on_step(row):
        if row["step"] == step:
            raise KeyboardInterrupt
    return on_step


def _log_steps(out):
    rows = (out / "log.csv").read_text().strip().splitlines()
    return [int(r.split(",")[1]) for r in rows[1:]]


def test_a_new_search_refuses_a_finished_run_unless_resumed_or_forced(tmp_path, capsys):
    cfg = dataclasses.replace(TINY, out_dir=str(tmp_path))
    run_search(cfg)
    before = {n: (tmp_path / n).read_bytes() for n in ("checkpoint.pt", "log.csv")}
    with pytest.raises(RunDirError, match="already holds a search.*--resume.*--force"):
        run_search(cfg)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before  # nothing truncated or overwritten
    assert cli.main(["search", "--out", str(tmp_path)] + CLI_TINY) == 2
    assert "already holds a search" in capsys.readouterr().err
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    # --resume of a finished run: nothing to do, nothing changed
    run_search(cfg, resume=True)
    assert load_search(tmp_path).epoch == 1
    # --force: a new search over the old one
    run_search(dataclasses.replace(cfg, seed=1), force=True)
    assert load_search(tmp_path).config.seed == 1 and _log_steps(tmp_path) == [0, 1]


def test_the_lock_stops_a_second_process_and_goes_when_its_holder_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dartscc_fast.search.rundir import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"in use by another search \\(process {holder.pid}"):
            claim_run_dir(tmp_path)
        with pytest.raises(RunDirError, match="in use"):
            run_search(dataclasses.replace(TINY, out_dir=str(tmp_path)))
        assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "log.csv").exists()
    finally:
        holder.kill()  # SIGKILL: no cleanup of its own
        holder.wait()
    claim_run_dir(tmp_path).release()  # the kernel dropped the dead holder's lock
    run_search(dataclasses.replace(TINY, out_dir=str(tmp_path)))
    assert load_search(tmp_path).epoch == 1


def test_two_searches_in_one_process_cannot_share_a_directory(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirError, match="in use"):
            run_search(dataclasses.replace(TINY, out_dir=str(tmp_path)))
    with RunLock(tmp_path):  # released on exit: it can be taken again
        pass


def test_the_log_is_written_only_after_the_first_checkpoint(tmp_path):
    cfg = dataclasses.replace(TINY, epochs=2, max_steps_per_epoch=3, checkpoint_every=2, out_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, on_step=_crash_at(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # no log, no checkpoint: no run here
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, on_step=_crash_at(3))  # not refused: the crashed run left nothing
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ck["epoch"], ck["position"], ck["step"]) == (1, 0, 3)
    assert _log_steps(tmp_path) == [0, 1, 2]  # what the checkpoint covers, not the steps after it
    run_search(cfg, resume=True)
    assert _log_steps(tmp_path) == list(range(6))


def test_temp_files_of_killed_writes_are_removed(tmp_path):
    cfg = dataclasses.replace(TINY, out_dir=str(tmp_path))
    run_search(cfg)
    for name in ("checkpoint.pt.tmp4242", "checkpoint.pt.k2j3h4.tmp"):  # the old writer's and this one's
        (tmp_path / name).write_bytes(b"PK\x03\x04partial")
    (tmp_path / "notes.tmp").write_text("not ours")
    run_search(cfg, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "checkpoint.pt", "log.csv", "notes.tmp"]


def test_resume_refuses_a_changed_latency_table_unless_forced(tmp_path):
    table_path = tmp_path / "table.json"
    table = latency_table_for(TINY, TINY.get_space())
    table.save(table_path)
    cfg = dataclasses.replace(TINY, epochs=2, latency_table=str(table_path), out_dir=str(tmp_path / "run"))
    run_search(cfg, stop_after_epochs=1)
    # the same prices written again (another date, other spacing) are the same table
    d = json.loads(table_path.read_text())
    d["meta"]["date"] = "2000-01-01T00:00:00+00:00"
    table_path.write_text(json.dumps(d))
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, resume=True, on_step=_crash_at(2))
    # nor is the same table at another path (a run directory moved with its table)
    moved = tmp_path / "moved.json"
    moved.write_text(table_path.read_text())
    with pytest.raises(KeyboardInterrupt):
        run_search(dataclasses.replace(cfg, latency_table=str(moved)), resume=True, on_step=_crash_at(2))
    # a changed price is not
    old_digest = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["latency_digest"]
    for entry in d["entries"].values():
        if entry["median"] > 0:
            entry["median"] *= 3
            break
    table_path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="latency table .* is not the one .* --force"):
        run_search(cfg, resume=True)
    assert load_search(cfg.out_dir).epoch == 1
    run_search(cfg, resume=True, force=True)
    assert load_search(cfg.out_dir).epoch == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["latency_digest"] != old_digest  # the new table's


class _Poisoned(torch.utils.data.Dataset):
    """The train images, NaN from the `after`-th image read on (a data source going bad mid-run)."""

    def __init__(self, base, after):
        self.base, self.after, self.reads = base, after, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        self.reads += 1
        return (torch.full_like(x, float("nan")), y) if self.reads > self.after else (x, y)


def test_a_nan_stops_the_search_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = dataclasses.replace(TINY, epochs=2, max_steps_per_epoch=4, checkpoint_every=2, out_dir=str(tmp_path))
    loaders = cfg.loaders()
    bad = _Poisoned(loaders.train.dataset, after=6 * cfg.batch_size)  # the batches from step 6 on
    poisoned = SimpleNamespace(train=SimpleNamespace(dataset=bad), val=loaders.val, split=loaders.split)
    with pytest.raises(NonFiniteError, match=r"step 6 \(epoch 2\): the loss is nan .*lr_w .*kappa .*grad_clip") as e:
        run_search(cfg, loaders=poisoned)
    assert "checkpoint.pt (step 6), is kept" in str(e.value)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ck["step"], ck["epoch"], ck["position"]) == (6, 1, 2)
    assert all(torch.isfinite(v).all() for v in ck["model"]["supernet"].values() if v.is_floating_point())
    assert max(_log_steps(tmp_path)) == 5
    assert issubclass(NonFiniteError, ValueError)  # the CLI reports it as an error: exit 2, no traceback


def test_huge_learning_rates_end_in_a_clear_error_not_a_nan_search(tmp_path):
    cfg = dataclasses.replace(TINY, epochs=1, max_steps_per_epoch=8, lr_w=1e30, lr_a=1e30, out_dir=str(tmp_path))
    with pytest.raises(NonFiniteError, match=r"search stopped at step \d+ \(epoch 1\).*learning rate"):
        run_search(cfg)
    assert not (tmp_path / "checkpoint.pt").exists()
