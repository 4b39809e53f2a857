"""Exported derived networks compute what the PyTorch network computes: TorchScript, and ONNX in ONNX Runtime."""
import numpy as np
import pytest
import torch

from dartscc_fast.evaluation.derive import export_model
from dartscc_fast.space import DiscreteNetwork, get_space, random_genotype


@pytest.fixture(scope="module")
def network():
    space = get_space("fmnist-paper", C=4)
    g = random_genotype(space, torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    return space, DiscreteNetwork(space, g).eval()


def _input(space, n=3):
    return torch.randn(n, space.in_channels, space.input_size, space.input_size,
                       generator=torch.Generator().manual_seed(1))


def test_torchscript_export_agrees(network, tmp_path):
    space, net = network
    path = export_model(net, space, tmp_path / "net.pt", "torchscript")
    x = _input(space)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(x), net(x), atol=1e-4, rtol=1e-4)


def test_onnx_export_agrees_in_onnxruntime(network, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    space, net = network
    path = export_model(net, space, tmp_path / "net.onnx", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _input(space, n=5)  # another batch than the export's: the batch axis is dynamic
    (y,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = net(x).numpy()
    assert y.shape == ref.shape and np.abs(y - ref).max() <= 1e-4


def test_unknown_export_format(network, tmp_path):
    space, net = network
    with pytest.raises(ValueError, match="torchscript' or 'onnx"):
        export_model(net, space, tmp_path / "net.x", "tflite")
