"""The state-conditioned flow: its exact log-density integrates to one (1-D and 2-D grids), the
sampling direction and the density direction agree, the mode is the prior's mean pushed through,
and zero-kernel networks can learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffmaxent.flows import ConditionalFlow, FlowMLP, squash, unsquash

OBS_DIM = 3


def perturbed_flow(action_dim: int, seed: int = 0, scale: float = 0.5):
    """A flow whose every parameter is moved by N(0, scale^2), so that the prior's log-std and the
    coupling shifts depend on the state and on the masked coordinates (at ``init`` the log-std
    network's kernels are zero)."""
    flow = ConditionalFlow(action_dim, hidden_dims=(16, 16), num_coupling_pairs=2)
    obs = jnp.zeros((1, OBS_DIM))
    params = flow.init(jax.random.PRNGKey(seed), obs, jnp.zeros((1, action_dim)), method="log_prob")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return flow, jax.tree_util.tree_unflatten(treedef, leaves)


def states(count: int, seed: int = 2) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), (count, OBS_DIM))


def test_log_density_integrates_to_one_on_a_1d_grid():
    flow, params = perturbed_flow(1)
    grid = jnp.linspace(-1.0, 1.0, 40_001)[1:-1]
    for obs in states(4):
        log_prob = flow.apply(
            params, jnp.broadcast_to(obs, (grid.size, OBS_DIM)), grid[:, None], method="log_prob"
        )
        mass = np.trapezoid(np.exp(np.asarray(log_prob, np.float64)), np.asarray(grid))
        np.testing.assert_allclose(mass, 1.0, atol=2e-3)


def test_log_density_integrates_to_one_on_a_2d_grid():
    # With two action dimensions the couplings move each coordinate by a shift that depends on
    # the other: the density only integrates to one if the inverse undoes them exactly. The grid
    # is on the pre-squash plane x (a = tanh x, da = prod(1 - a^2) dx), where the mass is not
    # pressed against the box's edges.
    flow, params = perturbed_flow(2, seed=3, scale=0.3)
    axis = np.linspace(-5.0, 5.0, 401)
    first, second = np.meshgrid(axis, axis, indexing="ij")
    actions, squash_log_det = squash(jnp.asarray(np.stack([first, second], -1).reshape(-1, 2)))
    for obs in states(2, seed=4):
        log_prob = flow.apply(
            params, jnp.broadcast_to(obs, (len(actions), OBS_DIM)), actions, method="log_prob"
        )
        density = np.exp(np.asarray(log_prob + squash_log_det, np.float64)).reshape(first.shape)
        mass = np.trapezoid(np.trapezoid(density, axis, axis=1), axis)
        np.testing.assert_allclose(mass, 1.0, atol=1e-3)


def test_sampled_log_prob_equals_the_density_of_the_sampled_action():
    flow, params = perturbed_flow(3, seed=5)
    obs = states(64, seed=6)
    action, sampled_log_prob = flow.apply(params, obs, jax.random.PRNGKey(7), method="sample")
    assert action.shape == (64, 3)
    inside = np.all(np.abs(np.asarray(action)) < 1 - 1e-3, axis=-1)  # away from the box margin
    assert inside.sum() > 32
    log_prob = flow.apply(params, obs, action, method="log_prob")
    np.testing.assert_allclose(log_prob[inside], sampled_log_prob[inside], rtol=1e-4, atol=1e-3)


def test_mode_is_the_prior_mean_pushed_through_the_flow():
    flow, params = perturbed_flow(2, seed=8)
    obs = states(16, seed=9)
    mode = flow.apply(params, obs, method="mode")

    def prior_sample(obs, action):
        """Invert the flow down to eps (the log-density's quadratic term is -|eps|^2 / 2)."""
        action_term, _ = flow.apply(params, obs, action, method="log_density_terms")
        return action_term + unsquash(action)[1]

    np.testing.assert_allclose(prior_sample(obs, mode), 0.0, atol=1e-6)
    # and it depends on the state through the couplings' shifts
    assert float(jnp.std(mode[:, 0])) > 1e-3


def test_squash_and_unsquash_are_inverse_with_the_same_log_determinant():
    x = jnp.array([[-2.0, 0.0, 0.7]])
    action, log_det = squash(x)
    back, inverse_log_det = unsquash(action)
    np.testing.assert_allclose(back, x, atol=1e-5)
    np.testing.assert_allclose(log_det, inverse_log_det, rtol=1e-6)
    np.testing.assert_allclose(log_det, np.log(1 - np.tanh([-2.0, 0.0, 0.7]) ** 2).sum(), rtol=1e-5)


def test_zero_kernel_networks_still_learn():
    # Zero kernels with zero biases would leave every hidden unit at swish(0) = 0 and every kernel
    # without a gradient; PyTorch's default biases (kept here) make the output kernel learn.
    net = FlowMLP((8, 8), 1, "zeros")
    x = jax.random.normal(jax.random.PRNGKey(0), (5, OBS_DIM))
    params = net.init(jax.random.PRNGKey(1), x)
    grads = jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2 + net.apply(p, x)))(params)
    assert float(jnp.abs(grads["params"]["Dense_2"]["kernel"]).sum()) > 0
