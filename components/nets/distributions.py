"""One distribution interface for every policy head.

A policy's distribution offers some of six operations (``OPS``); every policy network states which as
``net.distribution_ops`` (a frozenset), so a recipe that binds a loss to a network whose distribution cannot do what
the loss needs (``@declare(needs={"policy": ("log_prob",)})``) is refused when the recipe is built, not at step 1000
(:func:`require_ops`). An operation a distribution does not offer raises :class:`UnsupportedOperation` naming the
head and the operation.

==========================  =====================================================================================
``sample(shape=())``        a draw without gradient, ``[*shape, *batch, A]``
``rsample(shape=())``       a reparameterised draw (gradients reach the network), same shape
``log_prob(a)``             ``log pi(a | s)``, ``[*a.shape[:-1]]``
``mode``                    the most likely action ``[*batch, A]`` (for a mixture: the mean of its heaviest component)
``rsample_with_log_prob``   ``(rsample, its log_prob)``; tanh-wrapped heads use the pre-tanh value, not ``atanh``
``sample_with_log_prob``    ``(sample, its log_prob)`` without gradient
==========================  =====================================================================================

Which head offers what (``distribution_ops``):

* deterministic (:class:`PointMass` from ``policy.dist(batch)``): sample, rsample, mode — all equal to the action.
  It has no density: no log_prob. ``policy(batch)`` stays the action tensor itself (no wrapper on the BC hot path).
* Gaussian, with or without tanh (:class:`DiagGaussian`, :class:`TanhWrapped`): all six.
* GMM, with or without tanh (:class:`GaussianMixture`): sample, log_prob, mode, sample_with_log_prob. The mode of
  each draw is discrete, so there is no reparameterised sample.
* VAE policy (:class:`VAEPolicyDistribution`): sample; rsample too for a continuous prior (``normal``,
  ``gaussian``; a categorical latent or a mixture prior's component is drawn discretely). The density of a
  decoded action is intractable: no log_prob, mode or *_with_log_prob.

Every distribution here is built with ``validate_args=False``: torch's argument checks (no NaN among the means,
logits and the actions given to ``log_prob``; positive standard deviations) only raise and compute nothing, and cost
several small ops and a host read each time a head builds its distribution (a device sync on a GPU, in every
training step). The heads keep their standard deviations positive (``min_std``), and a NaN mean, logit or data
action makes the loss that uses it NaN, which the training step's finite check reports, naming that loss.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

OPS = frozenset({"sample", "rsample", "log_prob", "mode", "rsample_with_log_prob", "sample_with_log_prob"})
ALL_OPS = OPS
POINT_MASS_OPS = frozenset({"sample", "rsample", "mode"})
MIXTURE_OPS = frozenset({"sample", "log_prob", "mode", "sample_with_log_prob"})


class UnsupportedOperation(NotImplementedError):
    """A policy distribution asked for an operation it does not offer."""


def _refuse(name: str, op: str, ops, why: str):
    raise UnsupportedOperation(f"{name}: its action distribution has no {op} ({why}); it offers "
                               f"{', '.join(sorted(ops))}")


def _shape(sample_shape) -> torch.Size:
    return torch.Size(sample_shape if isinstance(sample_shape, (tuple, list, torch.Size)) else (sample_shape,))


def require_ops(net, ops, where: str = "") -> None:
    """Raise ``ValueError`` unless ``net.distribution_ops`` contains every op in ``ops`` (``where`` names the loss
    and argument in the message)."""
    unknown = set(ops) - OPS
    if unknown:
        raise ValueError(f"{where or 'a loss'} needs unknown distribution operations {sorted(unknown)}; "
                         f"known: {sorted(OPS)}")
    have = getattr(net, "distribution_ops", None)
    name = type(net).__name__
    if have is None:
        raise ValueError(f"{where or 'a loss'} needs {sorted(ops)} of its network's action distribution, but "
                         f"{name} is not a policy network (it has no distribution_ops)")
    missing = sorted(set(ops) - set(have))
    if missing:
        raise ValueError(f"{where or 'a loss'} needs {', '.join(missing)} of the action distribution, which "
                         f"{getattr(net, 'distribution_name', name)} cannot give (it offers "
                         f"{', '.join(sorted(have))}); choose a head that offers them")


class DiagGaussian(Independent):
    """``Independent(Normal(mean, std), 1)`` with the rest of the interface (all six operations). Built without
    torch's argument checks (see the module docstring)."""

    distribution_ops = ALL_OPS

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, name: str = "GaussianHead"):
        super().__init__(Normal(mean, std, validate_args=False), 1, validate_args=False)
        self.name = name

    def rsample_with_log_prob(self, sample_shape=torch.Size()):
        a = self.rsample(_shape(sample_shape))
        return a, self.log_prob(a)

    def sample_with_log_prob(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample_with_log_prob(sample_shape)


class GaussianMixture(MixtureSameFamily):
    """Mixture of diagonal Gaussians: ``logits [*batch, M]``, ``means``/``stds [*batch, M, A]``. No ``rsample``
    (each draw picks its mode discretely); ``mode`` is the mean of the heaviest component (a mixture's exact mode has
    no closed form). Built without torch's argument checks (see the module docstring)."""

    distribution_ops = MIXTURE_OPS

    def __init__(self, logits: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, name: str = "GMMHead"):
        super().__init__(Categorical(logits=logits, validate_args=False),
                         Independent(Normal(means, stds, validate_args=False), 1, validate_args=False),
                         validate_args=False)
        self.name = name

    @property
    def mode(self) -> torch.Tensor:
        means = self.component_distribution.base_dist.loc  # [*batch, M, A]
        best = self.mixture_distribution.logits.argmax(-1, keepdim=True)  # [*batch, 1]
        return means.gather(-2, best.unsqueeze(-1).expand(*best.shape, means.shape[-1])).squeeze(-2)

    def rsample(self, sample_shape=torch.Size()):
        _refuse(self.name, "rsample", self.distribution_ops, "a mixture's mode is drawn discretely, so its samples "
                "are not reparameterisable")

    def rsample_with_log_prob(self, sample_shape=torch.Size()):
        _refuse(self.name, "rsample_with_log_prob", self.distribution_ops, "a mixture's mode is drawn discretely, "
                "so its samples are not reparameterisable")

    def sample_with_log_prob(self, sample_shape=torch.Size()):
        with torch.no_grad():
            a = self.sample(_shape(sample_shape))
            return a, self.log_prob(a)


class TanhWrapped(Distribution):
    """``tanh(x)`` for ``x ~ base`` with the change-of-variables log-density (robomimic's
    ``TanhWrappedDistribution``, epsilon 1e-6). Offers what its base offers; ``mode`` is ``tanh(base.mode)``."""

    arg_constraints = {}

    def __init__(self, base: Distribution, epsilon: float = 1e-6, name: str | None = None):
        self.base, self.epsilon = base, epsilon
        self.name = name or f"{getattr(base, 'name', type(base).__name__)} (use_tanh)"
        self.distribution_ops = getattr(base, "distribution_ops", ALL_OPS if base.has_rsample else MIXTURE_OPS)
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:
        return "rsample" in self.distribution_ops

    def log_prob(self, value, pre_tanh_value=None):
        if pre_tanh_value is None:
            one = 1.0 - self.epsilon
            pre_tanh_value = torch.atanh(value.clamp(-one, one))
        lp = self.base.log_prob(pre_tanh_value)
        corr = torch.log(1.0 - value.pow(2) + self.epsilon)
        return lp - corr.sum(-1) if len(self.event_shape) else lp - corr

    def rsample(self, sample_shape=torch.Size(), return_pretanh_value: bool = False):
        if not self.has_rsample:
            _refuse(self.name, "rsample", self.distribution_ops, "its base distribution is not reparameterisable")
        z = self.base.rsample(_shape(sample_shape))
        return (torch.tanh(z), z) if return_pretanh_value else torch.tanh(z)

    def sample(self, sample_shape=torch.Size(), return_pretanh_value: bool = False):
        with torch.no_grad():
            if self.has_rsample:  # as robomimic: the reparameterised draw without gradient (same random numbers)
                return self.rsample(sample_shape, return_pretanh_value)
            z = self.base.sample(_shape(sample_shape))
            return (torch.tanh(z), z) if return_pretanh_value else torch.tanh(z)

    def rsample_with_log_prob(self, sample_shape=torch.Size()):
        if not self.has_rsample:
            _refuse(self.name, "rsample_with_log_prob", self.distribution_ops,
                    "its base distribution is not reparameterisable")
        a, z = self.rsample(sample_shape, return_pretanh_value=True)
        return a, self.log_prob(a, pre_tanh_value=z)

    def sample_with_log_prob(self, sample_shape=torch.Size()):
        with torch.no_grad():
            a, z = self.sample(sample_shape, return_pretanh_value=True)
            return a, self.log_prob(a, pre_tanh_value=z)

    @property
    def mean(self):
        """``tanh(base.mean)`` (robomimic's low-noise evaluation action; not the mean of the squashed variable)."""
        return torch.tanh(self.base.mean)

    @property
    def mode(self):
        return torch.tanh(self.base.mode)


class PointMass(Distribution):
    """The "distribution" of a deterministic policy: every draw is the action ``[*batch, A]`` (``sample`` without
    gradient, ``rsample`` with it). It has no density."""

    arg_constraints = {}
    has_rsample = True
    distribution_ops = POINT_MASS_OPS

    def __init__(self, action: torch.Tensor, name: str = "DeterministicHead"):
        self.action, self.name = action, name
        super().__init__(action.shape[:-1], action.shape[-1:], validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        shape = _shape(sample_shape)
        return self.action.expand(*shape, *self.action.shape) if len(shape) else self.action

    def sample(self, sample_shape=torch.Size()):
        return self.rsample(sample_shape).detach()

    @property
    def mode(self):
        return self.action

    @property
    def mean(self):
        return self.action

    def log_prob(self, value):
        _refuse(self.name, "log_prob", self.distribution_ops, "a deterministic policy is a point mass without a "
                "density; use a gaussian or gmm head for likelihood losses")

    def rsample_with_log_prob(self, sample_shape=torch.Size()):
        _refuse(self.name, "rsample_with_log_prob", self.distribution_ops, "a point mass has no density")

    def sample_with_log_prob(self, sample_shape=torch.Size()):
        _refuse(self.name, "sample_with_log_prob", self.distribution_ops, "a point mass has no density")


class VAEPolicyDistribution(Distribution):
    """Actions of a VAE policy for the TensorDict ``td``: decodings of prior samples (``actor.act``). ``rsample``
    keeps the decoder's graph (``normal``/``gaussian`` priors only: other latents are drawn discretely)."""

    arg_constraints = {}

    def __init__(self, actor, td, ops, name: str = "VAEActor"):
        self.actor, self.td, self.name = actor, td, name
        self.distribution_ops = frozenset(ops)
        super().__init__(torch.Size(td.batch_size), torch.Size([actor.ac_dim]), validate_args=False)

    @property
    def has_rsample(self) -> bool:
        return "rsample" in self.distribution_ops

    def _draw(self, sample_shape):
        shape = _shape(sample_shape)
        if not len(shape):
            return self.actor.act(self.td)
        n = math.prod(shape)
        a = self.actor.act(self.td, n=n)  # [*batch, n, A]
        return a.movedim(-2, 0).reshape(*shape, *a.shape[:-2], a.shape[-1])

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self._draw(sample_shape)

    def rsample(self, sample_shape=torch.Size()):
        if not self.has_rsample:
            _refuse(self.name, "rsample", self.distribution_ops,
                    "its latent is drawn discretely (categorical or mixture prior)")
        return self._draw(sample_shape)

    def log_prob(self, value):
        _refuse(self.name, "log_prob", self.distribution_ops, "the density of a decoded action is intractable")

    @property
    def mode(self):
        _refuse(self.name, "mode", self.distribution_ops, "the most likely decoded action has no closed form")

    def rsample_with_log_prob(self, sample_shape=torch.Size()):
        _refuse(self.name, "rsample_with_log_prob", self.distribution_ops,
                "the density of a decoded action is intractable")

    def sample_with_log_prob(self, sample_shape=torch.Size()):
        _refuse(self.name, "sample_with_log_prob", self.distribution_ops,
                "the density of a decoded action is intractable")
