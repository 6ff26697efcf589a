"""The settings of blind-denoiser training, and the one place their defaults and checks live
(pydantic models; no torch here: the study spec derives its `training` section from them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .limits import MAX_BATCH_SIZE, MAX_STEPS


# settings added after 0.6, and their value that trains as before they existed
_ADDED_OFF = {"average_last": 0.0}


class TrainSettings(BaseModel):
    """Every hyper-parameter of one run but its seed. Batch size and learning rate are the paper's;
    the step counts are a laptop-sized default — the paper counts epochs of 250k tiled images at
    batch 512 (1000 of them, the learning rate halved every 100), here everything is in gradient steps.
    """
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    steps: int = Field(default=2_000, ge=1, le=MAX_STEPS, description="gradient steps")
    batch_size: int = Field(default=512, ge=1, le=MAX_BATCH_SIZE, description="global batch (split evenly over the workers)")
    lr: float = Field(default=1e-3, gt=0, description="Adam's initial learning rate")
    lr_halve_every: int = Field(default=1_000, ge=1, le=MAX_STEPS, description="Adam lr halved every this many steps")
    noise_range: tuple[float, float] = Field(default=(0.0, 255.0), description="sigma range, grey levels /255")
    noise_schedule: Literal["quadratic", "linear"] = Field(
        default="quadratic", description="`quadratic`: denser at low sigma (the authors'); or `linear`")
    precision: Literal["fp32", "bf16"] = Field(default="fp32", description="bf16 autocast is used only on CUDA")
    checkpoint_every: int = Field(default=500, ge=1, le=MAX_STEPS, description="steps between checkpoints a "
                                                                              "stopped run resumes from")
    log_every: int = Field(default=50, ge=1, le=MAX_STEPS, description="steps between points of the loss curve")
    snapshot_steps: tuple[Annotated[int, Field(ge=1, le=MAX_STEPS)], ...] = Field(
        default=(), description="steps whose weights are kept, for memorization over training time")
    average_last: float = Field(
        default=0.0, ge=0, lt=1, description="the final model is the mean of the weights after each of the last "
        "this fraction of the steps (Polyak averaging); 0: the last step's weights, as in the paper")

    def recorded(self, **dump: Any) -> dict:
        """The settings as a checkpoint and a trial id record them: `model_dump(**dump)` less any
        setting added since models were first saved that still holds the value under which training
        is what it was before it existed, so those models and checkpoints keep their identity."""
        return {name: value for name, value in self.model_dump(**dump).items()
                if name not in _ADDED_OFF or value != _ADDED_OFF[name]}

    @staticmethod
    def last_step(steps: Any) -> int:
        """The last step of training given `steps` (a subclass may give steps per train size)."""
        return steps

    @field_validator("noise_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] < 0 or v[0] >= v[1]:
            raise ValueError(f"needs 0 <= low < high (got [{v[0]:g}, {v[1]:g}])")
        return v

    @field_validator("snapshot_steps")
    @classmethod
    def _within_training(cls, v: Any, info: ValidationInfo) -> Any:
        steps = info.data.get("steps")
        last = None if steps is None else cls.last_step(steps)
        late = [s for s in v if last is not None and s > last]
        if late:
            raise ValueError(f"steps {late} are after the end of training (steps = {last})")
        return v


class TrainConfig(TrainSettings):
    """The settings of one run: its study's settings and its own seed (batch order and noise).
    `snapshot_steps` are the steps whose weights are handed to `on_snapshot`, stored sorted."""
    seed: int = Field(default=0, ge=0)

    @field_validator("snapshot_steps")
    @classmethod
    def _sorted(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(set(v)))
