"""The pruning variant (seed 000): lambda-conditioned skipping of a pretrained ResNet's residual blocks.

:mod:`.resnet` the models, :mod:`.edges` the prunable edges and their gates and
times, :mod:`.lambda_bound` Theorem 1's Lambda, :mod:`.hypernet` lambda -> logits,
:mod:`.experiment` parts 1 and 2, :mod:`.report` the report, :mod:`.cli` the
``dartscc-fast prune`` command.
"""
from dartscc_fast.prune.edges import Edge, GatedBlock, PrunableNet, find_edges, measure_edge_times
from dartscc_fast.prune.experiment import PruneConfig, run_prune
from dartscc_fast.prune.hypernet import LambdaHypernet
from dartscc_fast.prune.lambda_bound import estimate_lambda, label_entropy, theorem1_lambda
from dartscc_fast.prune.resnet import BasicBlock, ResNet, resnet18_cifar, small_resnet

__all__ = ["Edge", "GatedBlock", "PrunableNet", "find_edges", "measure_edge_times", "PruneConfig", "run_prune",
           "LambdaHypernet", "estimate_lambda", "label_entropy", "theorem1_lambda", "BasicBlock", "ResNet",
           "resnet18_cifar", "small_resnet"]
