"""The pruning variant: edges, gates, Theorem 1's Lambda, the Gumbel-sigmoid, clear errors, a tiny run."""
import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dartscc_fast.cli import main
from dartscc_fast.latency.measure import num_threads
from dartscc_fast.prune.edges import GatedBlock, PrunableNet, find_edges, gamma_key
from dartscc_fast.prune.experiment import PruneConfig, optimise_gamma, sample_gamma
from dartscc_fast.prune.hypernet import LambdaHypernet
from dartscc_fast.prune.lambda_bound import (
    estimate_lambda,
    evaluate_gammas,
    explore_gammas,
    label_entropy,
    theorem1_lambda,
)
from dartscc_fast.prune.resnet import ResNet, resnet18_cifar, small_resnet


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the prune command runs: two OpenMP threads on a busy two-core CI box crawl."""
    with num_threads(1):
        yield


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
    return model.eval()


def test_resnet18_edges_are_the_identity_blocks():
    edges, rejected = find_edges(resnet18_cifar(), (1, 3, 32, 32))
    assert [e.name for e in edges] == ["layers.0.0", "layers.0.1", "layers.1.1", "layers.2.1", "layers.3.1"]
    assert [r["name"] for r in rejected] == ["layers.1.0", "layers.2.0", "layers.3.0"]
    for e in edges:
        assert e.in_shape == e.out_shape
    for r in rejected:  # every rejected block changes the shape: none of them is an edge
        assert r["in_shape"] != r["out_shape"]
    assert [e.in_shape[1:] for e in edges] == [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]


def test_small_resnet_edges():
    edges, rejected = find_edges(small_resnet(widths=(8, 16, 32), blocks=3), (2, 1, 28, 28))
    assert [e.name for e in edges] == ["layers.0.0", "layers.0.1", "layers.0.2", "layers.1.1", "layers.1.2",
                                       "layers.2.1", "layers.2.2"]
    assert len(rejected) == 2


def test_no_prunable_edges_is_a_clear_error():
    only_projections = ResNet(1, 10, (8, 16), (1, 1), (2, 2))
    with pytest.raises(ValueError, match="no prunable edges.*none with an identity shortcut"):
        find_edges(only_projections, (1, 1, 28, 28))
    with pytest.raises(ValueError, match="no prunable edges.*no residual block"):
        PrunableNet(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), (1, 1, 8, 8))


def _by_hand(model, x, gamma):
    """The pruned forward written out: skipped blocks pass x on; others relu(x + g * residual(x))."""
    h = model.stem(x)
    i = 0
    for stage in model.layers:
        for block in stage:
            if isinstance(block, GatedBlock):
                g = gamma[i]
                i += 1
                h = h if g == 0 else torch.relu(h + g * block.block.residual(h))
            else:
                h = block(h)
    return model.fc(torch.flatten(model.pool(h), 1))


def test_gate_skips_the_branch_and_matches_the_hand_forward():
    torch.manual_seed(0)
    model = _randomise_bn(small_resnet(widths=(4, 8, 8), blocks=2))
    x = torch.randn(3, 1, 28, 28)
    ref = model(x)
    net = PrunableNet(model, (1, 1, 28, 28)).eval()
    assert net.num_edges == 4
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)
        torch.testing.assert_close(net(x, torch.ones(4)), ref)
        calls = []
        hook = net.gates[1].block.residual.register_forward_hook(lambda *a: calls.append(1))
        gamma = torch.tensor([1.0, 0.0, 1.0, 0.0])
        out = net(x, gamma)
        hook.remove()
        assert calls == []  # a hard 0 does not run its branch
        torch.testing.assert_close(out, _by_hand(model, x, gamma))
        # per-sample gammas: row n of the output is sample n under gamma row n
        G = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 1]])
        out = net(x, G)
        for n in range(3):
            torch.testing.assert_close(out[n:n + 1], _by_hand(model, x[n:n + 1], G[n]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"gamma must have shape \[4\] or \[N, 4\]"):
        net(x, torch.ones(5))


def test_theorem1_hand_numbers_and_errors():
    # (ln 2 - 0.5) / (0.2 + 0.3)
    assert theorem1_lambda(math.log(2), 0.5, [0.2, 0.3]) == pytest.approx((math.log(2) - 0.5) / 0.5)
    with pytest.raises(ValueError, match="needs L_inf > L_sup"):
        theorem1_lambda(0.5, 0.7, [1.0])
    with pytest.raises(ValueError, match="finite times >= 0"):
        theorem1_lambda(1.0, 0.5, [0.5, -0.1])
    with pytest.raises(ValueError, match="T\\^T 1 is 0"):
        theorem1_lambda(1.0, 0.5, [0.0, 0.0])


def test_label_entropy_is_the_best_constant_loss():
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    hand = -(0.5 * math.log(0.5) + (1 / 6) * math.log(1 / 6) + (1 / 3) * math.log(1 / 3))
    assert label_entropy(y, 10) == pytest.approx(hand)
    # no constant logit vector does better (the optimum is the frequency vector)
    p = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([p], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(p.expand(6, 10), y)
        loss.backward()
        return loss
    opt.step(closure)
    assert float(F.cross_entropy(p.detach().expand(6, 10), y)) == pytest.approx(hand, abs=1e-4)


def test_lambda_estimate_on_a_tiny_network_equals_the_hand_computation():
    torch.manual_seed(1)
    model = _randomise_bn(small_resnet(widths=(4, 8, 8), blocks=2))
    net = PrunableNet(model, (1, 1, 28, 28)).eval()
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 3, (20,))
    # a head that beats the constant for some gammas: fit the last layer on this data
    with torch.no_grad():
        feats = model.pool(model.layers(model.stem(x))).flatten(1)
    fc = model.fc
    opt = torch.optim.Adam(fc.parameters(), lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(fc(feats), y).backward()
        opt.step()
    for p in model.parameters():
        p.requires_grad_(False)
    t = torch.tensor([0.1, 0.2, 0.05, 0.15])
    gammas = explore_gammas(4)
    assert gammas.shape == (16, 4) and gamma_key(gammas[0]) == "1111"
    ev = evaluate_gammas(net, [(x[:8], y[:8]), (x[8:], y[8:])], gammas)
    est = estimate_lambda(ev["loss"], gammas, label_entropy(y), t, ev["acc"])
    # by hand: every gamma's loss from the written-out forward, the label entropy, the formula
    with torch.no_grad():
        losses = [float(F.cross_entropy(_by_hand(model, x, g), y)) for g in gammas]
    counts = torch.bincount(y).double()
    l_inf = float(-(counts / 20 * (counts / 20).log()).sum())
    valid = [l for l in losses if l < l_inf]
    assert valid, "the fitted head must beat the constant for the all-on network"
    assert est.l_inf == pytest.approx(l_inf)
    assert est.l_sup == pytest.approx(max(valid), rel=1e-5)
    assert est.lambda_ == pytest.approx((l_inf - max(valid)) / 0.5, rel=1e-4)
    assert est.lambda_best == pytest.approx((l_inf - min(valid)) / 0.5, rel=1e-4)
    assert est.lambda_ > 0
    assert len(est.excluded) == sum(l >= l_inf for l in losses)


def test_binary_gumbel_hard_and_soft():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([8.0, -8.0, 0.0], requires_grad=True)
    hard = sample_gamma(logits.expand(64, 3), 1.0, True, g)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert hard[:, 0].mean() > 0.95 and hard[:, 1].mean() < 0.05
    (hard * torch.arange(3.0)).sum().backward()  # straight-through: the soft sample's gradient reaches the logits
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    soft = sample_gamma(torch.zeros(100), 1.0, False, g)
    assert ((soft > 0) & (soft < 1)).all()
    # column 0 of softmax([l, 0] + Gumbel) is a Gumbel-sigmoid: P(gamma = 1) = sigmoid(l)
    many = sample_gamma(torch.full((20000,), 1.0), 1.0, True, torch.Generator().manual_seed(3))
    assert float(many.mean()) == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.02)


def test_negative_lambda_is_rejected():
    net = PrunableNet(small_resnet(widths=(4, 8, 8), blocks=2).eval(), (1, 1, 28, 28))
    with pytest.raises(ValueError, match="lambda must be finite and >= 0"):
        optimise_gamma(net, [(torch.randn(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))], torch.ones(4), -0.1,
                       PruneConfig(steps=1), torch.Generator())
    with pytest.raises(ValueError, match="lambda must be finite and >= 0"):
        LambdaHypernet(4, 1.0)(torch.tensor([0.5, -1.0]))
    with pytest.raises(ValueError, match="every lambda must be finite and >= 0"):
        PruneConfig(lambdas=(0.0, -1.0))
    with pytest.raises(ValueError, match="lambda_top"):
        PruneConfig(lambda_top="huge")
    with pytest.raises(ValueError, match="unknown model"):
        PruneConfig(model="vgg")


def test_cli_rejects_negative_lambda(capsys):
    assert main(["prune", "--lambdas=0,-0.5", "--no-plots"]) == 2
    assert "every lambda must be finite and >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path, capsys):
    args = ["prune", "--tiny", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Lambda =" in out and "shipped Fashion-MNIST" in out
    report = json.loads((tmp_path / "out" / "prune_report.json").read_text())
    assert report["lambda"]["Lambda"] > 0
    assert len(report["part1"]) == 3 and len(report["part2"]["rows"]) >= 3
    assert report["pretrain"]["cached"] is False
    md = (tmp_path / "out" / "prune_report.md").read_text()
    assert "Lambda = (L_inf - L_sup) / T^T 1" in md and "train 560 / val 120 / test 120" in md
    assert (tmp_path / "out" / "prune_lambda.png").stat().st_size > 0
    # the second run loads the cached checkpoint
    assert main(args + ["--no-plots"]) == 0
    report2 = json.loads((tmp_path / "out" / "prune_report.json").read_text())
    assert report2["pretrain"]["cached"] is True
    assert report2["pretrain"]["test_acc"] == report["pretrain"]["test_acc"]
    assert list((tmp_path / "cache").iterdir())[0].suffix == ".pt"  # no temporary file left behind
