"""Every numeric option is checked where it is set (the config dataclasses and the CLI), naming it."""
import argparse
import dataclasses

import pytest
import torch

from dartscc_fast import cli
from dartscc_fast.evaluation.demo import DemoConfig
from dartscc_fast.evaluation.evaluate import RetrainConfig, accuracy, inherited_accuracy, train_discrete
from dartscc_fast.prune.experiment import PruneConfig
from dartscc_fast.search import SearchConfig, load_search, run_search
from dartscc_fast.validate import STEPS, Float, Int, arg

NAN, INF = float("nan"), float("inf")
TINY = SearchConfig(space_overrides={"C": 4}, limit=300, epochs=1, warmup_epochs=0, batch_size=16,
                    max_steps_per_epoch=2, progress=False)


@pytest.mark.parametrize("field, value, words", [
    ("kappa", NAN, "kappa must be a finite number >= 0"), ("kappa", INF, "kappa"), ("kappa", -1.0, "kappa"),
    ("grad_clip", NAN, "grad_clip must be a finite number > 0"), ("grad_clip", -1.0, "grad_clip"),
    ("grad_clip", 0.0, "grad_clip"), ("max_steps_per_epoch", -1, "max_steps_per_epoch must be an integer >= 1"),
    ("max_steps_per_epoch", 0, r"or None: no limit"), ("tau_start", NAN, "tau_start"), ("tau_end", 0.0, "tau_end"),
    ("epochs", 0, "SearchConfig.epochs must be an integer >= 1"), ("lr_w", -1.0, "SearchConfig.lr_w must be"),
    ("lr_a", NAN, "SearchConfig.lr_a"), ("lr_w_min", 1.0, "lr_w_min .* must not exceed lr_w"),
    ("batch_size", 0, "batch_size"), ("limit", 0, "limit"), ("warmup_epochs", -1, "warmup_epochs"),
    ("stride_balance", NAN, "stride_balance"), ("momentum", 1.0, "momentum"), ("wd_w", -1e-4, "wd_w"),
    ("prior_scale", INF, "prior_scale"), ("seed", -1, "seed"), ("checkpoint_every", 0, "checkpoint_every"),
    ("epochs", 2.5, "epochs must be an integer"), ("batch_size", True, "batch_size"), ("hidden", 0, "hidden"),
    ("knots", 1, "knots"), ("space_overrides", {"C": 0}, "C must be >= 1"),
    ("space_overrides", {"channels": 4}, "space_overrides"),
])
def test_search_config_refuses_bad_numbers_naming_the_field(field, value, words):
    with pytest.raises(ValueError, match=words):
        dataclasses.replace(TINY, **{field: value})


def test_epochs_zero_is_blamed_on_epochs_not_warmup():
    with pytest.raises(ValueError) as e:
        SearchConfig(epochs=0, warmup_epochs=0)
    assert "epochs" in str(e.value) and "warmup" not in str(e.value)


@pytest.mark.parametrize("argv, option", [
    (["--kappa", "nan"], "--kappa"), (["--kappa", "inf"], "--kappa"), (["--grad-clip", "nan"], "--grad-clip"),
    (["--grad-clip", "-1"], "--grad-clip"), (["--grad-clip", "0"], "--grad-clip"),
    (["--max-steps-per-epoch", "-1"], "--max-steps-per-epoch"), (["--max-steps-per-epoch", "0"], "--max-steps"),
    (["--tau", "nan", "0.2"], "--tau"), (["--epochs", "0"], "--epochs"), (["--lr-w", "-1"], "--lr-w"),
    (["--lr-a", "0"], "--lr-a"), (["--channels", "0"], "--channels"), (["--limit", "-5"], "--limit"),
    (["--split", "0.7", "nan", "0.3"], "--split"), (["--batch-size", "x"], "--batch-size"),
    (["--checkpoint-every", "0"], "--checkpoint-every"), (["--seed", "1.5"], "--seed"),
])
def test_search_cli_refuses_bad_numbers_naming_the_option(tmp_path, capsys, argv, option):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cli.main(["search", "--out", str(out)] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "must be" in err
    assert not out.exists()  # refused before anything was written


def test_channels_is_used_not_ignored(tmp_path):
    from dartscc_fast.cli.search import add_config_arguments, config_from_args
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    assert config_from_args(p.parse_args(["--channels", "6"]), str(tmp_path)).space_overrides == {"C": 6}
    assert config_from_args(p.parse_args([]), str(tmp_path)).space_overrides == {}


def test_arg_types_and_checks_agree():
    steps = arg(STEPS)
    assert steps("3") == 3
    for bad in ("0", "-1", "1.5", "nan", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="leave the option out for no limit"):
            steps(bad)
    assert arg(Float(0, 1))("0.25") == 0.25 and Int(1)("n", 4) == 4
    with pytest.raises(ValueError, match=r"n must be in \[0, 1\], got inf"):
        Float(0, 1)("n", INF)


def test_first_nonfinite_names_the_tensor():
    from dartscc_fast.validate import first_nonfinite
    ok = [("a", torch.ones(3)), ("b", torch.full((2,), 1e30)), ("i", torch.arange(3)), ("e", torch.zeros(0))]
    assert first_nonfinite(ok) is None  # a huge finite tensor overflows its norm, but is finite
    assert first_nonfinite(ok + [("c", torch.tensor([1.0, NAN], dtype=torch.float64))]) == "c"
    assert first_nonfinite([("h", torch.tensor([-INF], dtype=torch.bfloat16))] + ok) == "h"


def test_one_meaning_of_max_steps_everywhere():
    # None: no cap; 0: refused, in the search, the retraining and the demo alike
    assert SearchConfig(max_steps_per_epoch=None).max_steps_per_epoch is None
    assert RetrainConfig(max_steps_per_epoch=None).max_steps_per_epoch is None
    for make in (lambda: SearchConfig(max_steps_per_epoch=0), lambda: RetrainConfig(max_steps_per_epoch=0),
                 lambda: DemoConfig(max_steps_per_epoch=0), lambda: DemoConfig(retrain_max_steps=0)):
        with pytest.raises(ValueError, match=r"max_steps.* must be an integer >= 1 \(or None: no limit\), got 0"):
            make()


@pytest.mark.parametrize("field, value", [("epochs", 0), ("lr", NAN), ("lr", -1.0), ("grad_clip", 0.0),
                                          ("weight_decay", -1.0), ("max_steps_per_epoch", -2), ("seed", -1)])
def test_retrain_config_refuses_bad_numbers(field, value):
    with pytest.raises(ValueError, match=f"RetrainConfig.{field}"):
        RetrainConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("grid", 0), ("profile_seconds", NAN), ("threads", 0),
                                          ("retrain_epochs", -1), ("front_retrain", -1), ("fbnet_kappas", (1.0, NAN)),
                                          ("kappa", NAN), ("epochs", 0)])
def test_demo_config_refuses_bad_numbers(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        DemoConfig(out_dir=str(tmp_path), **{field: value})


@pytest.mark.parametrize("field, value", [("pretrain_lr", NAN), ("batch_size", 0), ("hyper_lr", -1.0),
                                          ("timing_seconds", 0.0), ("tau", NAN)])
def test_prune_config_refuses_bad_numbers(field, value):
    with pytest.raises(ValueError, match=f"PruneConfig.{field}"):
        PruneConfig(**{field: value})


@pytest.fixture(scope="module")
def no_test_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("notest")
    run_search(dataclasses.replace(TINY, split=(0.8, 0.2, 0.0), out_dir=str(out)))
    return out


def test_evaluate_refuses_an_empty_test_split(no_test_split, capsys):
    assert cli.main(["evaluate", "--search", str(no_test_split), "--retrain-epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert "test split" in err and "empty" in err and "0.00 %" not in err
    r = load_search(no_test_split)
    loaders = r.config.loaders()
    from dartscc_fast.evaluation.derive import derive
    g = derive(r, "A").genotype
    with pytest.raises(ValueError, match="holds no images"):
        inherited_accuracy(r.supernet, r.space, g, loaders.test)
    with pytest.raises(ValueError, match="holds no images"):
        accuracy(torch.nn.Flatten(), loaders.test)


@pytest.mark.parametrize("argv, option", [(["--retrain-max-steps", "0"], "--retrain-max-steps"),
                                          (["--retrain-epochs", "-1"], "--retrain-epochs")])
def test_evaluate_cli_refuses_zero_steps(tmp_path, capsys, argv, option):
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--search", str(tmp_path)] + argv)
    assert e.value.code == 2 and f"argument {option}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["profile", "--device", "sim:edge-gpu", "--batch", "0"], "--batch"),
    (["profile", "--device", "sim:edge-gpu", "--max-seconds", "nan"], "--max-seconds"),
    (["profile", "--device", "sim:edge-gpu", "--rel-ci", "0"], "--rel-ci"),
    (["profile", "--device", "sim:edge-gpu", "--threads", "0"], "--threads"),
    (["derive", "--S", "A", "--threads", "0"], "--threads"),
])
def test_other_commands_refuse_bad_numbers_naming_the_option(tmp_path, capsys, argv, option):
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["--out", str(tmp_path / "out")])
    assert e.value.code == 2 and f"argument {option}: must be" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_retraining_that_would_train_nothing_is_refused():
    from dartscc_fast.data.datasets import make_loaders
    from dartscc_fast.space import get_space, random_genotype
    space = get_space("fmnist-paper", C=4)
    g = random_genotype(space, torch.Generator().manual_seed(0))
    loaders = make_loaders(limit=40, batch_size=64, fractions=(0.5, 0.25, 0.25))  # 20 train images < 1 batch
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_discrete(space, g, loaders, RetrainConfig(epochs=1, progress=False))
