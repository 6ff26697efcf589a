"""Subspace tools on inputs whose answers are known."""

import math

import torch

from gahb_scale.analysis import disc_tangent_space, energy_in_subspace, principal_angles
from gahb_scale.data import render_discs


def test_principal_angles_of_planes_rotated_by_a_known_angle():
    theta = 0.3
    a = torch.zeros(4, 2, dtype=torch.float64)
    a[0, 0] = a[1, 1] = 1.0  # span(e0, e1)
    b = torch.zeros(4, 2, dtype=torch.float64)
    b[0, 0] = 1.0  # e0 is shared
    b[1, 1], b[2, 1] = math.cos(theta), math.sin(theta)  # e1 tilted towards e2
    assert torch.allclose(principal_angles(a, b), torch.tensor([0.0, theta], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(principal_angles(a, 3 * a), torch.zeros(2, dtype=torch.float64), atol=1e-6)
    orthogonal = torch.zeros(4, 2, dtype=torch.float64)
    orthogonal[2, 0] = orthogonal[3, 1] = 1.0
    assert torch.allclose(principal_angles(a, orthogonal), torch.full((2,), math.pi / 2, dtype=torch.float64))


def test_disc_tangent_space_contains_the_known_derivatives():
    params = torch.tensor([[8.3, 7.6, 4.2, 0.8, 0.2]], dtype=torch.float64)
    basis = disc_tangent_space(params, size=16)
    assert basis.shape == (1, 256, 5)
    assert torch.allclose(basis[0].T @ basis[0], torch.eye(5, dtype=torch.float64), atol=1e-10)
    # The image is bg + (fg − bg)·coverage, so ∂/∂fg is the coverage map and ∂/∂bg is 1 − coverage:
    # both lie exactly in the tangent space.
    fg_only = params.clone()
    fg_only[:, 3:] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    coverage = render_discs(fg_only, 16).flatten(1)[0]
    for v in (coverage, 1 - coverage):
        assert torch.linalg.norm(v - basis[0] @ (basis[0].T @ v)) < 1e-8 * torch.linalg.norm(v)
    # The geometric derivatives, estimated independently with a 10x smaller step, lie in it up to
    # a few percent: the anti-aliased coverage is piecewise linear in the position, so difference
    # quotients at different steps straddle different kinks.
    for k in range(3):
        shift = torch.zeros_like(params)
        shift[0, k] = 1e-4
        v = ((render_discs(params + shift, 16) - render_discs(params - shift, 16)).flatten(1) / 2e-4)[0]
        assert torch.linalg.norm(v - basis[0] @ (basis[0].T @ v)) < 0.06 * torch.linalg.norm(v)


def test_energy_in_subspace_of_a_projection_and_of_the_identity():
    basis = torch.linalg.qr(torch.randn(1, 50, 5, generator=torch.Generator().manual_seed(0),
                                        dtype=torch.float64))[0]
    projection = basis @ basis.transpose(-1, -2)
    assert torch.allclose(energy_in_subspace(projection, basis), torch.ones(1, dtype=torch.float64))
    identity = torch.eye(50, dtype=torch.float64).unsqueeze(0)
    assert torch.allclose(energy_in_subspace(identity, basis), torch.tensor([5 / 50], dtype=torch.float64))


def test_pair_basis_overlap_is_one_for_the_same_basis_and_zero_for_orthogonal_ones():
    from gahb_scale.design.measures import _basis_overlaps

    eye = torch.eye(16, dtype=torch.float64)
    first, last = eye[:4].reshape(1, 1, 4, 1, 4, 4).numpy(), eye[8:12].reshape(1, 1, 4, 1, 4, 4).numpy()
    sigmas = torch.tensor([25.0]).numpy()
    same = _basis_overlaps({"eigenvectors": first, "jacobian_sigmas": sigmas},
                           {"eigenvectors": first[:, :, ::-1].copy(), "jacobian_sigmas": sigmas}, {})
    apart = _basis_overlaps({"eigenvectors": first, "jacobian_sigmas": sigmas},
                            {"eigenvectors": last, "jacobian_sigmas": sigmas}, {})
    assert math.isclose(same[0]["basis_overlap"], 1.0) and math.isclose(apart[0]["basis_overlap"], 0.0, abs_tol=1e-12)
    assert same[0]["chance"] == 4 / 16
