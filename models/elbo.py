"""One-sample Monte Carlo estimators of the MFCVAE ELBO (appendix C), as pure tensor functions.

Per facet j, with z_j^(1) ~ q(z_j | x) and a_c = log p(z_j | c) + log pi_c:
  q(c_j | x) = softmax_c a_c                                                       eq. (12), (61)
  primary (eq. 62):   sum_c q_c [log p(z_j|c) + log pi_c] - log q(z_j|x) - sum_c q_c log q_c
  alternate (eq. 71): log sum_c exp(a_c) - log q(z_j|x)        (= log p(z_j) - log q(z_j|x))
The two are equal for every sample: sum_c q_c (a_c - log q_c) = logsumexp_c a_c. Their gradients
differ (appendix C.3). Progressive training (eq. 89) weighs facet j's KL terms by alpha_j.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FORMS = ("primary", "alternate")


@dataclass
class FacetTerms:
    """One facet's terms for a batch, each (B,). `kl` is what the ELBO subtracts (times alpha_j)."""

    kl: torch.Tensor
    kl_z: torch.Tensor  # E_q(c) KL(q(z_j|x) || p(z_j|c_j)), one-sample estimate
    kl_c: torch.Tensor  # KL(q(c_j|x) || p(c_j))
    log_q_c: torch.Tensor  # (B, K) log q(c_j | x)


def facet_terms(log_pz_given_c: torch.Tensor, log_pi: torch.Tensor, log_qz: torch.Tensor,
                form: str = "primary") -> FacetTerms:
    """The KL part of one facet: `log_pz_given_c` (B, K), `log_pi` (K,), `log_qz` (B,)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    log_joint = log_pz_given_c + log_pi
    log_q_c = torch.log_softmax(log_joint, dim=-1)
    q_c = log_q_c.exp()
    kl_z = log_qz - (q_c * log_pz_given_c).sum(-1)
    kl_c = (q_c * (log_q_c - log_pi)).sum(-1)
    if form == "primary":
        kl = kl_z + kl_c  # eq. (62): the five terms, grouped as in eq. (14)
    else:
        kl = log_qz - torch.logsumexp(log_joint, dim=-1)  # eq. (71)
    return FacetTerms(kl=kl, kl_z=kl_z, kl_c=kl_c, log_q_c=log_q_c)


def elbo(log_px: torch.Tensor, facets: list[FacetTerms], alphas: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x|z) - sum_j alpha_j KL_j, eq. (89); alphas None means all ones (eq. 62 / 71): (B,)."""
    total = log_px
    for j, terms in enumerate(facets):
        total = total - (terms.kl if alphas is None else alphas[j] * terms.kl)
    return total
