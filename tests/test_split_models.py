"""The two models of a split pair are independent networks (the paper's set-up); `shared_init` is the
explicit ablation in which they share initial weights and every training stream."""

from __future__ import annotations

import torch

from gahb_scale.design.spec_file import parse_spec
from gahb_scale.design.trials import expand_trials, initial_model
from gahb_scale.models import build_model
from gahb_scale.training import train_denoiser


def spec(shared_init: bool = False, seeds=(0, 1)):
    return parse_spec({"name": "t", "image_size": 12, "datasets": [{"name": "d", "kind": "discs"}],
                       "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}],
                       "train_sizes": [4], "seeds": list(seeds),
                       "training": {"steps": 3, "batch_size": 4, "shared_init": shared_init}})


def weights(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.state_dict().values() if p.is_floating_point()])


def test_models_a_and_b_differ_at_step_zero_and_every_model_is_distinct():
    s = spec()
    trials = expand_trials(s)
    assert len(trials) == 4  # seeds [0, 1] x splits A, B
    seeds = [t.training_seed() for t in trials]
    assert len(set(seeds)) == 4 and len({initial_model(s, t)[1].seed for t in trials}) == 4
    nets = [weights(initial_model(s, t)[0]) for t in trials]
    for i in range(4):
        for j in range(i):
            assert not torch.allclose(nets[i], nets[j])
    # deterministic: the same trial always starts from the same weights
    assert torch.equal(nets[0], weights(initial_model(s, trials[0])[0]))


def test_independent_models_draw_different_training_streams():
    s = spec()
    a, b = expand_trials(s)[:2]
    images = torch.rand(4, 1, 12, 12)
    losses = []
    for t in (a, b):
        # the same initial weights for both, so only the streams (σ, noise, batch order) differ
        net = build_model("unet", seed=0, width=4, blocks=1)
        losses.append(train_denoiser(net, images, initial_model(s, t)[1], device="cpu").losses)
    assert losses[0] != losses[1]


def test_shared_init_ablation_reproduces_the_shared_set_up_exactly():
    s = spec(shared_init=True)
    for t in expand_trials(s):
        net, config = initial_model(s, t)
        # the set-up before models became independent: everything seeded with the pair's seed
        assert config == s.training.config(t.seed, t.n)
        assert torch.equal(weights(net), weights(build_model("unet", seed=t.seed, width=4, blocks=1)))
    a, b = expand_trials(s)[:2]
    assert torch.equal(weights(initial_model(s, a)[0]), weights(initial_model(s, b)[0]))
    assert initial_model(s, a)[1] == initial_model(s, b)[1]


def test_the_ablation_has_its_own_trial_ids():
    independent = {t.trial_id for t in expand_trials(spec())}
    shared = {t.trial_id for t in expand_trials(spec(shared_init=True))}
    assert not independent & shared
