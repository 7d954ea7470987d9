"""Plausibility of the library device profiles: predicted inference beside published figures.

The library's device profiles (``device_profiles/devices/``) are estimates for hardware the
project does not have; this is the one external check they can get. For each profile it
traces batch-1 inference at 224x224 of three standard ImageNet CNNs (ResNet-18, ResNet-50,
MobileNetV2; the architectures of torchvision's models, written out here so that nothing
is downloaded), fp32 and int8 (the backend's PTQ model as a device runs it), prices the work
on the profile, and prints it beside the published measurement on that hardware, with the
source and the ratio. The reference host's rows are measured here instead (PyTorch, one
thread, median of 9). Reproduce docs/fidelity.md's table with:

    .venv/bin/python bench/published_check.py --out results/published_check.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedhq_sim.charge import charge_seconds
from fedhq_sim.models.registry import load_user_code, read_user_code
from fedhq_sim.profiles import ProfileLibrary
from fedhq_sim.quant import backend
from fedhq_sim.work import WorkProfile, traced

ROOT = Path(__file__).resolve().parent.parent
NCNN = "Tencent/ncnn benchmark/README.md @a4d2ea1d L"
PT_RPI = "pytorch/tutorials intermediate_source/realtime_rpi.rst @3c4e4e01"
T2T = "NVIDIA-AI-IOT/torch2trt docs/benchmarks/jetson_nano.md @4e820ae3"
DLE_PT = "NVIDIA/DeepLearningExamples PyTorch/Classification/ConvNets/resnet50v1.5/README.md @729963dd L"
MLPERF = "mlcommons/inference_results_v0.7 closed/NVIDIA SingleStream p90 @1321d137"
QAIHUB = "quic/ai-hub-models qai_hub_models/models/*/perf.yaml, Galaxy S23 NPU @660512ac L"


@dataclass(frozen=True)
class Published:
    """One published latency: hardware, model, precision, milliseconds, where and how."""

    device: str
    model: str
    precision: str
    ms: float
    source: str
    setting: str


PUBLISHED = (
    # Raspberry Pi 4: ncnn's section says 1.8 GHz; the profile is the stock 1.5 GHz board.
    Published("rpi4", "resnet18", "fp32", 123.12, NCNN + "1858", "ncnn, 4 threads, 1.8 GHz"),
    Published("rpi4", "resnet18", "int8", 83.92, NCNN + "1859", "ncnn, 4 threads, 1.8 GHz"),
    Published("rpi4", "mobilenet_v2", "fp32", 61.88, NCNN + "1846", "ncnn, 4 threads, 1.8 GHz"),
    Published("rpi4", "resnet50", "fp32", 262.83, NCNN + "1863", "ncnn, 4 threads, 1.8 GHz"),
    Published("rpi4", "resnet50", "int8", 196.65, NCNN + "1864", "ncnn, 4 threads, 1.8 GHz"),
    Published("rpi4", "resnet18", "fp32", 100.3, PT_RPI, "PyTorch, 4 cores, model time (precision not stated)"),
    Published("rpi4", "resnet50", "fp32", 225.2, PT_RPI, "PyTorch, 4 cores, model time (precision not stated)"),
    Published("rpi4", "mobilenet_v2", "int8", 26.4, PT_RPI, "PyTorch qnnpack int8, 4 cores, model time"),
    Published("rpi5", "mobilenet_v2", "int8", 24.4, PT_RPI + " ~41 fps", "PyTorch int8, whole camera loop"),
    Published("rpi5", "resnet18", "fp32", 19.96, NCNN + "1944", "ncnn, 4 threads, fp16 arithmetic"),
    Published("rpi5", "resnet18", "int8", 16.74, NCNN + "1945", "ncnn, 4 threads"),
    Published("rpi5", "mobilenet_v2", "fp32", 10.52, NCNN + "1932", "ncnn, 4 threads, fp16 arithmetic"),
    Published("rpi5", "resnet50", "fp32", 46.21, NCNN + "1949", "ncnn, 4 threads, fp16 arithmetic"),
    Published("rpi5", "resnet50", "int8", 40.75, NCNN + "1950", "ncnn, 4 threads"),
    Published("cortex_a53_gateway", "resnet18", "fp32", 271.93, NCNN + "1777", "ncnn, Pi 3B+, 4 threads"),
    Published("cortex_a53_gateway", "resnet18", "int8", 160.07, NCNN + "1778", "ncnn, Pi 3B+, 4 threads"),
    Published("cortex_a53_gateway", "mobilenet_v2", "fp32", 111.68, NCNN + "1765", "ncnn, Pi 3B+, 4 threads"),
    Published("cortex_a53_gateway", "resnet50", "fp32", 587.42, NCNN + "1780", "ncnn, Pi 3B+, 4 threads"),
    Published("cortex_a53_gateway", "resnet50", "int8", 391.87, NCNN + "1781", "ncnn, Pi 3B+, 4 threads"),
    Published("jetson_nano", "resnet18", "fp32", 34.7, T2T + " L8", "PyTorch on the GPU, fp16"),
    Published("jetson_nano", "resnet50", "fp32", 81.7, T2T + " L10", "PyTorch on the GPU, fp16"),
    Published("jetson_nano", "mobilenet_v2", "fp32", 12.99, NCNN + "4341", "ncnn Vulkan on the GPU"),
    Published("jetson_nano", "resnet18", "int8", 60.70, NCNN + "4436", "ncnn on the 4 A57 cores (no int8 GPU units)"),
    Published("jetson_orin_nano", "resnet18", "fp32", 8.26, NCNN + "4176", "ncnn Vulkan on the GPU"),
    Published("jetson_orin_nano", "mobilenet_v2", "fp32", 6.91, NCNN + "4164", "ncnn Vulkan on the GPU"),
    Published("jetson_orin_nano", "resnet50", "fp32", 9.31, NCNN + "4181", "ncnn Vulkan on the GPU"),
    Published("jetson_orin_nano", "resnet18", "int8", 13.86, NCNN + "4265", "ncnn on the 6 A78AE cores"),
    Published("phone_soc", "resnet18", "fp32", 6.63, NCNN + "8733", "ncnn, 4 big CPU cores"),
    Published("phone_soc", "mobilenet_v2", "fp32", 3.23, NCNN + "8721", "ncnn, 4 big CPU cores"),
    Published("phone_soc", "resnet50", "fp32", 18.94, NCNN + "8738", "ncnn, 4 big CPU cores"),
    Published("phone_soc", "resnet18", "int8", 0.541, QAIHUB + "880 (resnet18)", "QNN w8a8 on the Hexagon NPU"),
    Published("phone_soc", "resnet50", "int8", 0.786, QAIHUB + "834 (resnet50)", "TFLite w8a8 on the Hexagon NPU"),
    Published("x86_server", "resnet18", "fp32", 3.50, NCNN + "10207", "ncnn, Xeon Platinum 8573C, 16 threads"),
    Published("x86_server", "resnet18", "int8", 2.77, NCNN + "10208", "ncnn, Xeon Platinum 8573C, 16 threads"),
    Published("x86_server", "mobilenet_v2", "fp32", 2.83, NCNN + "10195", "ncnn, Xeon Platinum 8573C, 16 threads"),
    Published("x86_server", "resnet50", "fp32", 8.06, NCNN + "10212", "ncnn, Xeon Platinum 8573C, 16 threads"),
    Published("x86_server", "resnet50", "int8", 4.85, NCNN + "10213", "ncnn, Xeon Platinum 8573C, 16 threads"),
    Published("gpu_t4_server", "resnet50", "fp32", 10.7, DLE_PT + "662", "PyTorch FP32, batch 1 (pytorch-21.03)"),
    Published("gpu_t4_server", "resnet50", "int8", 1.086, MLPERF + " T4x1_TRT", "TensorRT 7.2 int8"),
    Published("gpu_a100_server", "resnet50", "int8", 0.519, MLPERF + " A100-PCIex1_TRT", "TensorRT 7.2 int8"),
)
"""Each device's most comparable published figures: the same precision where there is one, and the
threads the profile says PyTorch uses (docs/fidelity.md names the settings that differ)."""

NO_FIGURE = {
    "ipc_n100": "no published CNN latency for the N100 (ncnn lists only the older Celeron N5105)",
    "industrial_pc_i5": "no published CNN latency for the i5-1145G7 or a 4-core Tiger Lake at 4 threads",
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """He et al. (CVPR 2016), ImageNet layout: torchvision's resnet18/resnet50 shapes."""

    def __init__(self, block: type[BasicBlock | Bottleneck], blocks: tuple[int, ...], classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        layers, cin = [], 64
        for stage, count in enumerate(blocks):
            width = 64 * 2**stage
            for index in range(count):
                layers.append(block(cin, width, 2 if index == 0 and stage > 0 else 1))
                cin = width * block.expansion
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def standard_models() -> dict[str, nn.Module]:
    mobilenet = load_user_code(read_user_code("models/mobilenet_v2.py", ROOT / "scenarios" / "scenario.yaml"))
    return {
        "resnet18": ResNet(BasicBlock, (2, 2, 2, 2)),
        "resnet50": ResNet(Bottleneck, (3, 4, 6, 3)),
        "mobilenet_v2": mobilenet.MobileNetV2(num_classes=1000, width=1.0),
    }


def inference_work(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[WorkProfile, nn.Module]]:
    """The traced work of one fp32 and one int8 (deployed PTQ) inference, with each model."""
    model.eval()
    with torch.no_grad():
        _, fp32 = traced(lambda: model(x))
    prepared = backend.prepare_ptq(model)
    backend.calibrate(prepared, [x])
    deployed = backend.convert(prepared)
    _, int8 = traced(lambda: backend.run_deployed(deployed, x))
    return {"fp32": (fp32, model), "int8": (int8, deployed)}


def measured_ms(model: nn.Module, x: torch.Tensor) -> float:
    """This host's median wall time of the same fp32 inference (one thread)."""

    def run() -> None:
        with torch.no_grad():
            model(x)

    run()
    times = []
    for _ in range(9):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    library = ProfileLibrary(ROOT / "device_profiles")
    x = torch.randn(1, 3, 224, 224)
    works = {name: inference_work(model, x) for name, model in standard_models().items()}
    here = Path(__file__)
    lines = [
        "| device | model | precision | predicted ms | published ms | ratio | published setting | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    host = library.device("reference_host", referenced_from=here, key="device")
    for name, by_precision in works.items():
        work, model = by_precision["fp32"]  # the host runs int8 models as fp32 references: no int8 to time
        predicted = charge_seconds(work, host) * 1e3
        measured = measured_ms(model, x)
        lines.append(
            f"| reference_host | {name} | fp32 | {predicted:.1f} | {measured:.1f} (measured here) | "
            f"{predicted / measured:.2f} | PyTorch, 1 thread, this host | bench/published_check.py |"
        )
    for figure in PUBLISHED:
        device = library.device(figure.device, referenced_from=here, key="device")
        predicted = charge_seconds(works[figure.model][figure.precision][0], device) * 1e3
        lines.append(
            f"| {figure.device} | {figure.model} | {figure.precision} | {predicted:.3g} | {figure.ms:g} | "
            f"{predicted / figure.ms:.2f} | {figure.setting} | {figure.source} |"
        )
    for device_name, reason in NO_FIGURE.items():
        device = library.device(device_name, referenced_from=here, key="device")
        predicted = ", ".join(
            f"{name} {precision} {charge_seconds(w, device) * 1e3:.3g} ms"
            for name, by_precision in works.items()
            for precision, (w, _) in by_precision.items()
        )
        lines.append(f"| {device_name} | (all) | | {predicted} | - | - | {reason} | |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
