"""Packed seeds: S copies of one model trained as one, with a leading seed dimension on every
parameter and buffer (`torch.func.stack_module_state`), the loss run per seed under `torch.func.vmap`
over `functional_call`. Pure functions; the models themselves know nothing of seeds.

    params, buffers = stack(models)                  # S built-and-prepared models, same config
    set_alphas(buffers, alphas)                      # the fade-in, the same for every seed
    x = stack_batches([x_0, ..., x_S-1])             # each seed's own batch
    losses = packed_losses(template, params, buffers, x, noise)   # (S,) mean negative ELBO per seed
    finite_per_seed(losses)                          # [bool] * S (one host sync)
    state = unstack(params, buffers, i)              # seed i as an ordinary state_dict

`x` is (S, B, ...): each seed's own batch. `noise` is one (S, B, d_j) standard-normal tensor per
facet, drawn outside vmap from each seed's own generator (`draw_noise`), in the order and shapes
`MFCVAE.reparameterise` draws them, so a packed seed sees the noise its single run would. vmap runs
with `randomness="error"`: nothing inside may draw random numbers.

Batch norm (ladder-conv, shared-conv) is supported: its running statistics are buffers stacked like
the parameters, and in training mode `functional_call` under vmap updates each seed's slice in place
(running mean, variance and `num_batches_tracked`), as a single model's batch norm updates its own.
Each seed normalises by its own batch's statistics; tests/test_packed.py checks seed i's running
statistics against a single run of seed i.

Adam is elementwise, so one Adam over the stacked leaves is S Adams; `optimiser_state_of` slices
seed i's state into the format of `torch.optim.Adam(model.parameters())`, and `keep` cuts the pack
(parameters, buffers and optimiser state) down to the seeds that go on, `keep_rows` a per-seed
vector such as summed losses.

The seed dimension stays in this module: a caller (harness.trial.packed) holds seeds as lists (batches,
generators, flags, floats) and hands tensors with a seed dimension only to these functions.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

Stacked = dict[str, torch.Tensor]


class _NegativeELBO(nn.Module):
    """The per-seed objective as a module call, for functional_call: -mean one-sample ELBO of a batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        return -self.model.loss_terms(x, noise=noise)["elbo"].mean()


def stack(models: list[nn.Module]) -> tuple[Stacked, Stacked]:
    """(parameters, buffers) of `models` stacked along a new leading seed dimension, in the order of
    `named_parameters` / `named_buffers`. Parameters are fresh leaves that require grad; the models
    are left as they were."""
    if len(models) < 1:
        raise ValueError("stack needs at least one model")
    params, buffers = stack_module_state(models)
    return params, buffers


def pack_size(params: Stacked) -> int:
    return len(next(iter(params.values())))


def stack_batches(batches: list[torch.Tensor]) -> torch.Tensor:
    """(S, B, ...): seed s's batch batches[s] (each (B, ...), the same B for every seed)."""
    return torch.stack(batches)


@torch.no_grad()
def set_alphas(buffers: Stacked, alphas: list[float]) -> None:
    """Every seed's fade-in coefficients (the stacked `alphas` buffer, (S, J)) set to `alphas` (J), in place."""
    stacked = buffers["alphas"]
    stacked.copy_(torch.as_tensor(alphas, dtype=stacked.dtype).expand_as(stacked))


def zeros_per_seed(params: Stacked) -> torch.Tensor:
    """(S,) float32 zeros on the pack's device: a per-seed running sum (of losses, say)."""
    return torch.zeros(pack_size(params), device=next(iter(params.values())).device)


def finite_per_seed(values: torch.Tensor) -> list[bool]:
    """Whether each seed's value of an (S,) tensor is finite, as a list (one host sync)."""
    return torch.isfinite(values).tolist()


def values_per_seed(values: torch.Tensor) -> list[float]:
    """An (S,) tensor as S floats (one host sync)."""
    return values.detach().tolist()


def keep_rows(values: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Rows `indices` (in that order) of a tensor with a leading seed dimension, such as losses."""
    return values[torch.tensor(indices, dtype=torch.long, device=values.device)]


def packed_losses(template: nn.Module, params: Stacked, buffers: Stacked, x: torch.Tensor,
                  noise: list[torch.Tensor]) -> torch.Tensor:
    """(S,) per-seed mean loss -ELBO of seed s's batch x[s] under seed s's parameters and noise.

    `template` is a model of the same configuration whose own tensors are not used (its training
    flag is: batch norm normalises by batch statistics and updates its running statistics, the
    stacked buffers, in train mode). Summing the result and calling backward gives each seed's
    gradient in its slice of the stacked parameters: the seeds do not interact."""
    wrapper = _NegativeELBO(template)

    def one(p: Stacked, b: Stacked, x_s: torch.Tensor, noise_s: list[torch.Tensor]) -> torch.Tensor:
        state = {f"model.{k}": v for k, v in p.items()}
        state.update({f"model.{k}": v for k, v in b.items()})
        return functional_call(wrapper, state, (x_s, noise_s))

    return vmap(one, randomness="error")(params, buffers, x, noise)


def draw_noise(generators: list[torch.Generator], batch: int, latent_dims: list[int], device: torch.device,
               dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Per facet, (S, batch, d_j) standard normal: row s from generators[s], drawn facet by facet as
    MFCVAE.reparameterise draws from the global RNG (one randn of (batch, d_j) per facet, in order)."""
    per_seed = [[torch.randn((batch, d), generator=g, device=device, dtype=dtype) for d in latent_dims]
                for g in generators]
    return [torch.stack([draws[j] for draws in per_seed]) for j in range(len(latent_dims))]


@torch.no_grad()
def unstack(params: Stacked, buffers: Stacked, index: int) -> dict[str, torch.Tensor]:
    """Seed `index`'s parameters and buffers by name: a state_dict for `model.load_state_dict`
    (views into the stack: load them, do not torch.save them)."""
    state = {k: v[index].detach() for k, v in params.items()}
    state.update({k: v[index] for k, v in buffers.items()})
    return state


def optimiser_state_of(optimiser_state: dict, index: int) -> dict:
    """Seed `index`'s slice of a stacked optimiser's state_dict, in the format the optimiser has for a
    single model of the same parameters (Adam: `exp_avg`, `exp_avg_sq` sliced; the scalar `step`,
    the same for every seed, copied). Tensors are copies, safe to torch.save."""
    state = {}
    for key, values in optimiser_state["state"].items():
        state[key] = {name: (value[index].clone() if _per_seed(value) else
                             value.clone() if torch.is_tensor(value) else value)
                      for name, value in values.items()}
    groups = [{**group, "params": list(group["params"])} for group in optimiser_state["param_groups"]]
    return {"state": state, "param_groups": groups}


def keep(params: Stacked, buffers: Stacked, optimiser: torch.optim.Optimizer, indices: list[int]
         ) -> tuple[Stacked, Stacked, torch.optim.Optimizer]:
    """The pack cut down to seeds `indices` (in that order): new parameter leaves, buffers and an
    optimiser of the same class and hyperparameters whose state is the old one's rows `indices`."""
    index = torch.tensor(indices, device=next(iter(params.values())).device)
    with torch.no_grad():
        new_params = {k: v.index_select(0, index).clone().requires_grad_(v.requires_grad) for k, v in params.items()}
        new_buffers = {k: v.index_select(0, index.to(v.device)).clone() for k, v in buffers.items()}
    old = optimiser.state_dict()
    if len(old["param_groups"]) != 1:
        raise ValueError("keep expects an optimiser with one parameter group over the stacked parameters")
    new_optimiser = type(optimiser)(list(new_params.values()), **optimiser.defaults)
    state = {}
    for key, values in old["state"].items():
        state[key] = {name: (value.index_select(0, index.to(value.device)).clone() if _per_seed(value) else value)
                      for name, value in values.items()}
    new_optimiser.load_state_dict({"state": state, "param_groups": old["param_groups"]})
    return new_params, new_buffers, new_optimiser


def _per_seed(value) -> bool:
    """A stacked per-parameter state tensor (Adam's moments), not a scalar such as `step`."""
    return torch.is_tensor(value) and value.ndim >= 1
