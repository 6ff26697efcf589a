"""Several networks of one architecture trained as one module: a *pack*.

A scaling study is many small models. Trained one per process they leave a GPU almost idle and
pay a process (and Ray worker-group) start each; packed, K models share one process and one step.
Their parameters and buffers are stacked along a new leading dimension, and one step runs all K:

- fused: one `torch.vmap` over the stacked weights, which turns every convolution into a grouped
  convolution of K groups (HFTA's horizontal fusion; PyTorch's model-ensembling route). One
  kernel launch per layer for the whole pack: this is what fills a GPU with small models.
- looped: model after model, each on its slice of the stacked weights. On CPU grouped
  convolutions are slower than K separate ones (measured 1.45x for K=4 width-16 UNets), and a CPU
  has no launch overhead to amortise, so there the pack only saves the process start.

Both give each model exactly its own computation: its own weights, its own BF batch-norm
statistics (each model normalises by the std of its own batch and keeps its own running std), and,
because Adam is elementwise, its own Adam state when one optimizer steps the stacked parameters.
The models never mix: the gradient of the summed loss with respect to model k's slice is the
gradient of model k's loss.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state


def _attr(name: str) -> str:
    return name.replace(".", "/")  # module attribute names may not contain dots


class ModelPack(nn.Module):
    """K networks of one architecture (K >= 1); `forward` maps (K, B, C, H, W) to (K, B, C, H, W),
    network k applied to batch k. `fused=None` fuses on CUDA and loops elsewhere."""

    def __init__(self, nets: list[nn.Module], fused: bool | None = None):
        super().__init__()
        if not nets:
            raise ValueError("a pack needs at least one network")
        kinds = {(type(n), tuple((k, tuple(v.shape)) for k, v in n.state_dict().items())) for n in nets}
        if len(kinds) > 1:
            raise ValueError("a pack holds networks of one architecture with the same hyper-parameters")
        self.k = len(nets)
        self.fused = fused
        params, buffers = stack_module_state(nets)
        self.param_names, self.buffer_names = list(params), list(buffers)
        for name, value in params.items():
            self.register_parameter(_attr(name), nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.register_buffer(_attr(name), value.detach().clone())
        # The architecture without storage; a plain attribute, so it is not a submodule whose
        # (meta) parameters the optimizer or DDP would see.
        object.__setattr__(self, "_template", copy.deepcopy(nets[0]).to("meta"))

    def _stacked(self) -> tuple[dict, dict]:
        return ({n: getattr(self, _attr(n)) for n in self.param_names},
                {n: getattr(self, _attr(n)) for n in self.buffer_names})

    def _apply_one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        # Buffers are passed as the tensors themselves (slices, or vmap's per-model views), so the
        # batch-norm's in-place running-std update lands in model k's row of the stacked buffer.
        return functional_call(self._template, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.k:
            raise ValueError(f"a pack of {self.k} networks needs input of shape ({self.k}, B, C, H, W), got "
                             f"{tuple(x.shape)}")
        self._template.train(self.training)
        params, buffers = self._stacked()
        fused = x.is_cuda if self.fused is None else self.fused
        if fused:
            return torch.vmap(self._apply_one)(params, buffers, x)
        return torch.stack([self._apply_one({n: p[k] for n, p in params.items()},
                                            {n: b[k] for n, b in buffers.items()}, x[k]) for k in range(self.k)])

    def channels_last_(self) -> "ModelPack":
        """Lay out every network's 4-D weights channels-last, in place; the networks compute the same
        functions. oneDNN's CPU convolutions train a pack of width-16 UNets 10-13% faster this way (batch 8-32,
        `benchmarks/cpu_weight_layout.py`): a (K, O, I, h, w) stack is stored as (K, O, h, w, I),
        so that each model's slice is a channels-last (O, I, h, w) weight."""
        for param in self.parameters():
            if param.dim() == 5:
                k, o, i, h, w = param.shape
                # .data, as nn.Module.to(memory_format=...) does: the Parameter objects stay the ones
                # an optimizer may already hold
                param.data = param.data.new_empty(k, o, h, w, i).permute(0, 1, 4, 2, 3).copy_(param.data)
        return self

    def state_dict_of(self, k: int) -> dict[str, torch.Tensor]:
        """Network k's state dict, as the network alone would have it."""
        return {name.replace("/", "."): t[k].detach().clone() for name, t in self.state_dict().items()}

    def network(self, k: int) -> nn.Module:
        """Network k as a module of its own (a copy, on the pack's device)."""
        net = copy.deepcopy(self._template).to_empty(device=next(self.parameters()).device)
        net.load_state_dict(self.state_dict_of(k))
        return net.train(self.training)
