"""Self-routing (Hahn 2019) against a plain-loop float64 reading of its equations, and its network."""

from __future__ import annotations

import math

import pytest
import torch

from robustcaps.models import create_model
from robustcaps.models.selfrouting import MASS_EPSILON, SelfRoutingCaps, self_routing


def oracle_layer(layer: SelfRoutingCaps, activations: torch.Tensor, poses: torch.Tensor):
    """The convolutional layer one output position, parent and child at a time, reading children straight
    from the zero-padded channels-first maps: activations (N, T, H, W), poses (N, T·D, H, W)."""
    k, s, p, d, types = layer.kernel, layer.stride, layer.padding, layer.dim, layer.in_types
    a = torch.nn.functional.pad(activations, (p, p, p, p)).tolist()
    u = torch.nn.functional.pad(poses, (p, p, p, p)).tolist()
    wr, br = layer.route_weight.tolist(), layer.route_bias.tolist()
    wp = layer.pose_weight.tolist() if layer.pose_weight is not None else None
    parents = len(br[0])
    side = (poses.shape[-1] + 2 * p - k) // s + 1
    out_a = [[[[0.0] * side for _ in range(side)] for _ in range(parents)] for _ in range(len(a))]
    out_u = [[[[0.0] * side for _ in range(side)] for _ in range(parents * d)] for _ in range(len(a))]
    for n in range(len(a)):
        for row in range(side):
            for col in range(side):
                children = []  # (a_i, u_i, weight index i): offset-major, then type
                for kr in range(k):
                    for kc in range(k):
                        for t in range(types):
                            y, x = s * row + kr, s * col + kc
                            pose = [u[n][t * d + e][y][x] for e in range(d)]
                            children.append((a[n][t][y][x], pose, (kr * k + kc) * types + t))
                total = sum(child[0] for child in children)
                c = []
                for _, pose, i in children:
                    z = [sum(wr[i][j][e] * pose[e] for e in range(d)) + br[i][j] for j in range(parents)]
                    m = max(z)
                    e_z = [math.exp(v - m) for v in z]
                    c.append([v / sum(e_z) for v in e_z])
                for j in range(parents):
                    mass = sum(c[q][j] * children[q][0] for q in range(len(children)))
                    out_a[n][j][row][col] = mass / (total + MASS_EPSILON)
                    if wp is None:
                        continue
                    for e in range(d):
                        vote_sum = sum(
                            c[q][j] * a_i * sum(wp[i][j][e][f] * pose[f] for f in range(d))
                            for q, (a_i, pose, i) in enumerate(children)
                        )
                        out_u[n][j * d + e][row][col] = vote_sum / (mass + MASS_EPSILON)
    return torch.tensor(out_a, dtype=torch.float64), torch.tensor(out_u, dtype=torch.float64)


def _random_layer(poses: bool, kernel=3, stride=2, padding=1) -> SelfRoutingCaps:
    layer = SelfRoutingCaps(2, 3, 4, kernel=kernel, stride=stride, padding=padding, poses=poses).double()
    with torch.no_grad():  # away from the uniform start, so that the routing weights matter
        for parameter in layer.parameters():
            parameter.normal_(0.0, 0.7)
    return layer


@pytest.mark.parametrize(("poses", "geometry"), [(True, (3, 2, 1)), (False, (5, 1, 0)), (True, (2, 1, 0))])
def test_convolutional_layer_matches_the_plain_loop_oracle(poses, geometry):
    generator = torch.Generator().manual_seed(3)
    layer = _random_layer(poses, *geometry)
    activations = torch.rand(2, 2, 5, 5, dtype=torch.float64, generator=generator)
    pose_maps = torch.randn(2, 2 * 4, 5, 5, dtype=torch.float64, generator=generator)
    got_a, got_u = layer(activations, pose_maps)
    want_a, want_u = oracle_layer(layer, activations, pose_maps)
    torch.testing.assert_close(got_a, want_a)
    if poses:
        torch.testing.assert_close(got_u, want_u)
    else:
        assert got_u is None


def test_routing_starts_uniform_and_parent_activations_are_a_distribution_without_padding():
    layer = SelfRoutingCaps(2, 3, 4, kernel=3, stride=1, padding=0, poses=True)
    routed = self_routing(
        torch.randn(2, 4, 18, 4),
        torch.rand(2, 4, 18),
        layer.route_weight,
        layer.route_bias,
        layer.pose_weight,
    )
    torch.testing.assert_close(routed.coupling, torch.full((2, 4, 18, 3), 1 / 3))
    torch.testing.assert_close(routed.activations.sum(-1), torch.ones(2, 4))


def test_a_child_routes_where_its_subordinate_network_sends_it():
    poses = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)  # (N, L, I, C)
    activations = torch.tensor([[[1.0, 0.0]]])  # only child 0 is active
    route_weight = torch.zeros(2, 2, 2)
    route_weight[0, 0, 0] = 10.0  # child 0, whose pose is (1, 0), sends itself to parent 0
    routed = self_routing(poses, activations, route_weight, torch.zeros(2, 2), torch.ones(2, 2, 1, 2))
    assert routed.activations[0, 0, 0] > 0.99 and routed.activations[0, 0, 1] < 0.01
    torch.testing.assert_close(routed.poses[0, 0, 0], torch.tensor([1.0]))  # parent 0's pose: child 0's vote


def test_gradcheck_through_self_routing():
    generator = torch.Generator().manual_seed(5)
    args = [
        torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()
        for shape in ((2, 3, 6, 4), (2, 3, 6), (6, 5, 4), (6, 5), (6, 5, 3, 4))
    ]
    args[1] = args[1].detach().sigmoid().requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: self_routing(*a).activations, args)
    assert torch.autograd.gradcheck(lambda *a: self_routing(*a).poses, args)


@pytest.mark.parametrize("case", ["all-inactive", "identical-children", "huge-poses"])
def test_degenerate_inputs_give_finite_outputs_and_gradients(case):
    poses, activations = torch.randn(2, 3, 6, 4), torch.rand(2, 3, 6)
    if case == "all-inactive":
        activations = torch.zeros(2, 3, 6)
    elif case == "identical-children":
        poses = poses[:, :, :1].expand(2, 3, 6, 4).clone()
    else:
        poses = 1e6 * poses
    weights = [torch.randn(6, 5, 4), torch.zeros(6, 5), torch.randn(6, 5, 3, 4)]
    inputs = [t.requires_grad_() for t in (poses, activations, *weights)]
    routed = self_routing(*inputs)
    assert torch.isfinite(routed.activations).all() and torch.isfinite(routed.poses).all()
    (routed.activations.sum() + routed.poses.sum()).backward()
    for t in inputs:
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize("image", ["flat", "black", "noise"])
def test_network_gives_finite_class_probabilities_and_input_gradients_on_degenerate_images(image):
    model = create_model("sr-capsnet-small", in_channels=2).eval()
    with torch.no_grad():  # trained-like routing weights rather than the uniform start
        for layer in (model.conv_caps, model.class_caps):
            layer.route_weight.normal_(0.0, 0.5)
    x = {
        "flat": torch.full((2, 2, 32, 32), 0.5),
        "black": torch.zeros(2, 2, 32, 32),
        "noise": torch.rand(2, 2, 32, 32),
    }[image].requires_grad_()
    activations = model(x, output="activations")
    assert activations.shape == (2, 5) and torch.isfinite(activations).all()
    torch.testing.assert_close(activations.sum(1), torch.ones(2), atol=1e-5, rtol=0)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 4])).backward()
    assert torch.isfinite(x.grad).all()
    # a flat image standardises to zeros, which the bias-free Conv1 and ReLU pass on as a zero gradient
    assert image != "noise" or x.grad.abs().sum() > 0


def test_the_released_smallnorb_sizes():
    model = create_model("sr-capsnet")
    assert sum(p.numel() for p in model.parameters()) == 2_432_864
    assert model.conv_caps.pose_weight.shape == (3 * 3 * 16, 16, 16, 16)
    assert model.class_caps.pose_weight is None and model.class_caps.route_weight.shape == (6 * 6 * 16, 5, 16)
