"""The settings of one blind-denoiser training run (no torch here: the study spec reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run, and the one place their defaults live (a study's `training`
    section takes them from here). Batch size and learning rate are the paper's; the step counts are
    a laptop-sized default — the paper counts epochs of 250k tiled images at batch 512 (1000 of them,
    the learning rate halved every 100), here everything is in gradient steps.
    """

    steps: int = 2_000
    batch_size: int = 512
    lr: float = 1e-3
    lr_halve_every: int = 1_000
    noise_range: tuple[float, float] = (0.0, 255.0)  # σ range in grey levels (/255)
    noise_schedule: str = "quadratic"  # quadratic: denser at low σ; or linear
    precision: str = "fp32"  # bf16 = bf16 autocast, used on CUDA only
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0  # batch order and noise
    snapshot_steps: tuple[int, ...] = ()  # steps whose weights are handed to `on_snapshot`

    def __post_init__(self):
        object.__setattr__(self, "noise_range", tuple(float(v) for v in self.noise_range))  # YAML gives lists
        object.__setattr__(self, "snapshot_steps", tuple(sorted({int(s) for s in self.snapshot_steps})))
        a, b = self.noise_range
        if not 0 <= a < b:
            raise ValueError(f"noise_range must satisfy 0 <= a < b, got {self.noise_range}")
        if self.noise_schedule not in ("quadratic", "linear"):
            raise ValueError(f"noise_schedule must be 'quadratic' or 'linear', got {self.noise_schedule!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        for name in ("steps", "batch_size", "lr_halve_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.snapshot_steps and not 1 <= self.snapshot_steps[0] <= self.snapshot_steps[-1] <= self.steps:
            raise ValueError(f"snapshot_steps must lie in [1, steps = {self.steps}], got {list(self.snapshot_steps)}")
