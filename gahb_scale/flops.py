"""The peak FLOP/s of the device a model trains on, for model FLOP utilisation (MFU): achieved
model FLOP/s (`training.training_flops_per_image` x images/s) over the device's dense peak at the
precision used."""

from __future__ import annotations

import torch

# Dense peaks in TFLOP/s from NVIDIA's data sheets: (bf16 tensor core, tf32 tensor core, fp32).
# Matched against torch.cuda.get_device_name in this order (the first substring found wins).
_PEAK_TFLOPS = [
    ("H100 PCIe", (756.0, 378.0, 51.2)),
    ("H100 NVL", (835.0, 417.5, 60.0)),
    ("GH200", (989.4, 494.7, 66.9)),
    ("H200 NVL", (835.0, 417.5, 60.0)),
    ("H200", (989.4, 494.7, 66.9)),
    ("H100", (989.4, 494.7, 66.9)),  # SXM5 ("H100 80GB HBM3")
    ("A100", (312.0, 156.0, 19.5)),
    ("L40S", (362.1, 181.0, 91.6)),
]


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak FLOP/s for `precision` ("bf16" or "fp32"), None where unknown (CPUs,
    GPUs not in the table). fp32 convolutions count against the TF32 peak when cuDNN may use TF32
    (PyTorch's default), since that is what they run on."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (bf16, tf32, fp32) in _PEAK_TFLOPS:
        if key in name:
            if precision == "bf16":
                return bf16 * 1e12
            return (tf32 if torch.backends.cudnn.allow_tf32 else fp32) * 1e12
    return None
