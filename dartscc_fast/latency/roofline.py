"""Simulated devices: a roofline model of the DARTS primitives, with named presets.

A primitive runs as a chain of kernels (ReLU, depthwise conv, pointwise conv,
BatchNorm, ...), each of which reads its input from memory and writes its
output back, as eager PyTorch runs them. Each kernel costs

    time = max(FLOPs / peak, bytes / bandwidth) + overhead

(the roofline bound plus a fixed per-kernel launch/dispatch cost), and a
primitive costs the sum over its kernels. FLOPs and bytes are computed from the
configuration alone (:func:`kernels`), so a table for a device one does not have
is a function of four numbers. ``skip_connect`` at stride 1 and 'none' launch
nothing and cost 0.

The presets (FP32 peak from cores x clock x FLOPs/cycle; memory bandwidth from
the memory interface; the overheads are assumptions, typical of eager PyTorch
or a mobile runtime) and their public sources:

- ``mobile-cpu``: a Cortex-A76 class phone CPU, as in the Snapdragon 855:
  1 x 2.84 GHz + 3 x 2.42 GHz Cortex-A76, each with two 128-bit NEON FMA pipes
  (16 FP32 FLOPs/cycle): 16 x (2.84 + 3 x 2.42) GHz = 161.6 GFLOP/s FP32
  (FP16 arithmetic twice that); LPDDR4X-4266 on 4 x 16 bits = 34.1 GB/s;
  5 us per layer. Sources: Arm Cortex-A76 Software Optimization Guide
  (two ASIMD/FP pipes, FMA on both); Qualcomm Snapdragon 855 Mobile Platform
  product brief (CPU clocks, LPDDR4X 2133 MHz).
- ``edge-gpu``: NVIDIA Jetson Orin Nano 8GB: 1024 Ampere CUDA cores at
  625 MHz, 2 FLOPs per FMA: 1.28 TFLOP/s FP32 (FP16 2x); 128-bit LPDDR5 at
  68 GB/s; 20 us per kernel (launch plus eager dispatch on its Cortex-A78AE
  host). Source: NVIDIA Jetson Orin Nano Series data sheet (DS-11105-001).
- ``server-gpu``: NVIDIA A100 SXM4 40GB: 19.5 TFLOP/s FP32, 312 TFLOP/s
  FP16/BF16 (tensor cores, dense), 1,555 GB/s HBM2; 6 us per kernel.
  Source: NVIDIA A100 Tensor Core GPU data sheet.
- ``h100``: NVIDIA H100 SXM5 80GB: 67 TFLOP/s FP32, 989 TFLOP/s FP16/BF16
  (tensor cores, dense), 3.35 TB/s HBM3; 5 us per kernel.
  Source: NVIDIA H100 Tensor Core GPU data sheet.

A roofline is an optimistic bound (depthwise convolutions reach a few per cent
of peak), so simulated tables rank ops sensibly but underestimate absolute
times; normalise L (:func:`dartscc_fast.latency.normalise`) and only the ratios
matter. Any measured table can be used in a simulated table's place.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple, Union

from dartscc_fast.latency.keys import BaseConfig, OpConfig, dtype_name

if TYPE_CHECKING:  # the table uses this model for its missing entries: a runtime import would be a cycle
    from dartscc_fast.latency.table import LatencyTable

_ELEM = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class DevicePreset:
    """A simulated device: peak FLOP/s per dtype, memory bandwidth (bytes/s), per-kernel overhead (s)."""
    name: str
    description: str
    peak_flops: Dict[str, float]
    bandwidth: float
    overhead: float
    sources: Tuple[str, ...]

    def peak(self, dtype: str) -> float:
        return self.peak_flops.get(dtype_name(dtype), self.peak_flops["float32"])


PRESETS: Dict[str, DevicePreset] = {p.name: p for p in [
    DevicePreset("mobile-cpu", "Cortex-A76 class mobile CPU (Snapdragon 855: 1x2.84 + 3x2.42 GHz A76, LPDDR4X)",
                 {"float32": 161.6e9, "float16": 323.2e9, "bfloat16": 161.6e9, "float64": 80.8e9},
                 34.1e9, 5e-6,
                 ("Arm Cortex-A76 Software Optimization Guide: two 128-bit ASIMD/FP pipes with FMA",
                  "Qualcomm Snapdragon 855 Mobile Platform product brief: CPU clocks, LPDDR4X 2133 MHz 4x16-bit")),
    DevicePreset("edge-gpu", "Jetson Orin Nano 8GB class edge GPU (1024 Ampere cores at 625 MHz, LPDDR5)",
                 {"float32": 1.28e12, "float16": 2.56e12, "bfloat16": 2.56e12, "float64": 0.02e12},
                 68e9, 20e-6,
                 ("NVIDIA Jetson Orin Nano Series Data Sheet DS-11105-001: 1024-core Ampere GPU, 625 MHz, "
                  "128-bit LPDDR5 68 GB/s",)),
    DevicePreset("server-gpu", "A100 SXM4 40GB class server GPU",
                 {"float32": 19.5e12, "float16": 312e12, "bfloat16": 312e12, "float64": 9.7e12},
                 1555e9, 6e-6,
                 ("NVIDIA A100 Tensor Core GPU data sheet: FP32 19.5 TFLOPS, FP16/BF16 tensor 312 TFLOPS, "
                  "HBM2 1,555 GB/s (40GB)",)),
    DevicePreset("h100", "H100 SXM5 80GB server GPU",
                 {"float32": 67e12, "float16": 989e12, "bfloat16": 989e12, "float64": 34e12},
                 3.35e12, 5e-6,
                 ("NVIDIA H100 Tensor Core GPU data sheet: FP32 67 TFLOPS, FP16/BF16 tensor 989 TFLOPS dense, "
                  "HBM3 3.35 TB/s (SXM5)",)),
]}


def get_preset(name: str) -> DevicePreset:
    name = name[4:] if name.startswith(("sim:", "sim-")) else name
    if name not in PRESETS:
        raise ValueError(f"unknown simulated device {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]


# --------------------------------------------------------------------------- kernels
Kernel = Tuple[str, float, float]  # (name, FLOPs, bytes)


class _K:
    """Kernel cost formulas for a batch n and element size es."""

    def __init__(self, n: int, es: int):
        self.n, self.es = n, es

    def eltwise(self, name, numel, flops_per=1, reads=1):
        return (name, flops_per * numel, (reads + 1) * numel * self.es)

    def relu(self, c, h, w):
        return self.eltwise("relu", self.n * c * h * w)

    def bn(self, c, h, w):
        numel = self.n * c * h * w
        return ("batch_norm", 2 * numel, (2 * numel + 2 * c) * self.es)

    def conv(self, name, cin, cout, kh, kw, h, w, ho, wo, groups=1):
        flops = 2 * (cin // groups) * cout * kh * kw * self.n * ho * wo
        params = (cin // groups) * cout * kh * kw
        return (name, flops, (self.n * cin * h * w + self.n * cout * ho * wo + params) * self.es)

    def pool(self, c, h, w, ho, wo):
        return ("pool_3x3", 9 * self.n * c * ho * wo, (self.n * c * h * w + self.n * c * ho * wo) * self.es)


def kernels(cfg: OpConfig) -> List[Kernel]:
    """The kernels one primitive launches, with their FLOPs and bytes moved."""
    k = _K(cfg.batch, _ELEM[cfg.dtype])
    p, c, h, w, s = cfg.primitive, cfg.cin, cfg.h, cfg.w, cfg.stride
    ho, wo = cfg.out_hw
    if p == "none" or (p == "skip_connect" and s == 1):
        return []
    if p in ("max_pool_3x3", "avg_pool_3x3"):
        return [k.pool(c, h, w, ho, wo)]
    if p == "skip_connect":  # FactorizedReduce: two strided 1x1 convs of C/2 channels
        half = cfg.cout // 2
        return [k.relu(c, h, w), k.conv("conv_1x1_s2", c, half, 1, 1, ho, wo, ho, wo),
                k.conv("conv_1x1_s2", c, half, 1, 1, ho, wo, ho, wo),
                k.eltwise("cat", k.n * cfg.cout * ho * wo), k.bn(cfg.cout, ho, wo)]
    if p.startswith("sep_conv_"):
        ks = int(p[-1])
        return [k.relu(c, h, w), k.conv("dw_conv", c, c, ks, ks, h, w, ho, wo, groups=c),
                k.conv("pw_conv", c, c, 1, 1, ho, wo, ho, wo), k.bn(c, ho, wo), k.relu(c, ho, wo),
                k.conv("dw_conv", c, c, ks, ks, ho, wo, ho, wo, groups=c),
                k.conv("pw_conv", c, cfg.cout, 1, 1, ho, wo, ho, wo), k.bn(cfg.cout, ho, wo)]
    if p.startswith("dil_conv_"):
        ks = int(p[-1])
        return [k.relu(c, h, w), k.conv("dil_dw_conv", c, c, ks, ks, h, w, ho, wo, groups=c),
                k.conv("pw_conv", c, cfg.cout, 1, 1, ho, wo, ho, wo), k.bn(cfg.cout, ho, wo)]
    if p == "conv_7x1_1x7":
        return [k.relu(c, h, w), k.conv("conv_1x7", c, c, 1, 7, h, w, h, wo),
                k.conv("conv_7x1", c, c, 7, 1, h, wo, ho, wo), k.bn(c, ho, wo)]
    raise ValueError(f"no roofline model for primitive {p!r}")


def base_kernels(space, batch: int, dtype: str = "float32", inputs: str = "all") -> List[Kernel]:
    """The kernels of a network's fixed part, as :class:`dartscc_fast.space.DiscreteNetwork` runs it
    with every edge free: stem, preprocessing, node sums, concatenation, pooling, classifier."""
    k = _K(batch, _ELEM[dtype_name(dtype)])
    H = space.input_size
    C_stem = space.stem_multiplier * space.C
    out = [k.conv("stem_conv", space.in_channels, C_stem, 3, 3, H, H, H, H), k.bn(C_stem, H, H)]
    C_pp, C_p, C = C_stem, C_stem, space.C
    H_pp, H_p = H, H
    red_prev = False
    for i in range(space.layers):
        red = space.is_reduction(i)
        if red:
            C *= 2
        if red_prev:  # FactorizedReduce(C_pp, C) from H_pp to H_p
            out += [k.relu(C_pp, H_pp, H_pp), k.conv("conv_1x1_s2", C_pp, C // 2, 1, 1, H_p, H_p, H_p, H_p),
                    k.conv("conv_1x1_s2", C_pp, C // 2, 1, 1, H_p, H_p, H_p, H_p),
                    k.eltwise("cat", batch * C * H_p * H_p), k.bn(C, H_p, H_p)]
        else:
            out += [k.relu(C_pp, H_pp, H_pp), k.conv("conv_1x1", C_pp, C, 1, 1, H_pp, H_pp, H_pp, H_pp),
                    k.bn(C, H_pp, H_pp)]
        out += [k.relu(C_p, H_p, H_p), k.conv("conv_1x1", C_p, C, 1, 1, H_p, H_p, H_p, H_p), k.bn(C, H_p, H_p)]
        Ho = (H_p - 1) // 2 + 1 if red else H_p
        for i in range(space.steps):
            n_in = 2 + i if inputs == "all" else 2
            out += [k.eltwise("add", batch * C * Ho * Ho, reads=2)] * (n_in - 1)
        out.append(k.eltwise("cat", batch * space.multiplier * C * Ho * Ho))
        red_prev = red
        C_pp, C_p = C_p, space.multiplier * C
        H_pp, H_p = H_p, Ho
    out.append(("global_avg_pool", batch * C_p * H_p * H_p, batch * C_p * H_p * H_p * k.es))
    out.append(("linear", 2 * batch * C_p * space.num_classes,
                (batch * C_p + C_p * space.num_classes + batch * space.num_classes) * k.es))
    return out


def kernel_time_ms(ks: Sequence[Kernel], preset: DevicePreset, dtype: str) -> float:
    peak = preset.peak(dtype)
    return 1e3 * sum(max(f / peak, b / preset.bandwidth) + preset.overhead for _, f, b in ks)


def estimate(cfg: Union[OpConfig, BaseConfig], preset: Union[str, DevicePreset], space=None) -> float:
    """The roofline time (ms) of one configuration on a preset (a BaseConfig needs its space)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if isinstance(cfg, BaseConfig):
        if space is None:
            raise ValueError("estimating a network base needs the search space")
        return kernel_time_ms(base_kernels(space, cfg.batch, cfg.dtype, cfg.inputs), preset, cfg.dtype)
    return kernel_time_ms(kernels(cfg), preset, cfg.dtype)


def calibrated_estimates(table: LatencyTable, configs: Sequence[OpConfig]) -> Tuple[Dict[str, float], str]:
    """Roofline estimates of configs a table lacks, scaled to the table's own entries.

    The scale is the median ratio measured / roofline over the table's entries
    of the same primitive (of any primitive when it has none), so the estimate
    inherits the device's real efficiency. Returns the estimates and how they
    were made.
    """
    dev = table.device or "cpu"
    ref = get_preset(dev) if dev.startswith("sim-") else PRESETS["mobile-cpu" if dev == "cpu" else "server-gpu"]
    ops = []
    for key, e in table.entries.items():
        if not key.startswith("base:"):
            c = OpConfig.parse(key)
            raw = estimate(c, ref)
            ms = e[table.statistic]  # the run the table's lookups read, so estimates match its entries
            if raw > 0 and ms > 0:
                ops.append((c.primitive, ms / raw))
    out = {}
    for cfg in configs:
        same = [r for p, r in ops if p == cfg.primitive]
        ratios = same or [r for _, r in ops]
        scale = statistics.median(ratios) if ratios else 1.0
        out[cfg.key()] = estimate(cfg, ref) * scale
    how = (f"the '{ref.name}' roofline scaled by the median measured/roofline ratio of the table's entries"
           if ops else f"the '{ref.name}' roofline (the table has no entries to calibrate it)")
    return out, how


def __getattr__(name: str):
    # simulate_table builds a LatencyTable, a layer above this model: it lives in measure, still importable here
    if name == "simulate_table":
        from dartscc_fast.latency.measure import simulate_table  # allowed in tests/test_layering.py
        return simulate_table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
