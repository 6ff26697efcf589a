"""The layering rule and the resource model: the science core knows nothing of Ray or MLflow, and
a study never asks for more concurrent trials than the cluster can place."""

import subprocess
import sys

import pytest

from gahb_scale.study.spec import parse_spec

CORE = ["gahb_scale.data", "gahb_scale.models", "gahb_scale.training", "gahb_scale.sampling", "gahb_scale.analysis"]


def test_science_core_imports_neither_ray_nor_mlflow():
    code = (f"import sys; import {', '.join(CORE)}; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')); print(loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def spec_with(**resources):
    return parse_spec({"name": "r", "image_size": 12, "datasets": [{"name": "d", "kind": "discs"}],
                       "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}],
                       "train_sizes": [1], "resources": {"max_concurrent_trials": 8, **resources}})


@pytest.mark.parametrize("resources, cluster, expected", [
    ({"cpus_per_trial": 1}, {"CPU": 2}, 2),          # two 1-CPU trials fill 2 CPUs, drivers included
    ({"cpus_per_trial": 2}, {"CPU": 2}, 1),
    ({"cpus_per_trial": 1}, {"CPU": 64}, 8),         # the spec's cap
    ({"cpus_per_trial": 1, "gpus_per_trial": 0.25}, {"CPU": 16, "GPU": 1}, 4),  # fractional GPUs
    ({"cpus_per_trial": 1, "gpus_per_trial": 1}, {"CPU": 16, "GPU": 2}, 2),
])
def test_concurrency_never_exceeds_what_the_cluster_can_place(resources, cluster, expected):
    from gahb_scale.study.train import max_concurrent

    spec = spec_with(**resources)
    k = max_concurrent(spec, cluster)
    assert k == expected
    r = spec.resources
    # k trials hold k x cpus_per_trial (their drivers hold no CPU)
    assert k * r.cpus_per_trial <= cluster["CPU"] + 1e-9
    assert k * r.gpus_per_trial <= cluster.get("GPU", 0) + 1e-9
