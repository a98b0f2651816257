"""SmoothedClassifier: Cohen et al. 2019's PREDICT and CERTIFY over any base classifier.

g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I), sigma in [0,1] pixel units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import bounds, noise, stats
from .errors import ConfigError
from .preprocess import Preprocessor, PreprocessSpec
from .sampling import Sampler, Task, check_classifier, default_noise_threads

ABSTAIN = stats.ABSTAIN


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer for one example; radii are l2, in [0,1] pixel units, 0 on abstain.

    ``radius`` is Cohen's sigma Phi^-1(pA_lower) at level alpha (or, with ``bound="best"``, the larger of
    Cohen's and the two-class radius, both at the split level). ``radius_2class`` (Cohen et al.'s
    Theorem 1 with pB_upper bounding every other class) and ``radius_tv`` (total variation) each hold
    at level alpha on their own, with alpha split between pA_lower and pB_upper.
    """

    predict: int
    radius: float
    p_a_lower: float
    n_a: int
    n: int
    n0: int
    guess: int
    nonfinite: int
    p_b_upper: float
    radius_2class: float
    radius_tv: float
    counts: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class Prediction:
    """PREDICT's answer: the top class, or ABSTAIN when the binomial test's p-value exceeds alpha."""

    predict: int
    p_value: float
    count_a: int
    count_b: int
    n: int
    nonfinite: int


def _check_args(n0: int | None, n: int, alpha: float) -> None:
    if n0 is not None and n0 < 1:
        raise ConfigError(f"n0={n0}: expected at least 1 selection sample")
    if n < 1:
        raise ConfigError(f"n={n}: expected at least 1 sample")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha={alpha}: expected 0 < alpha < 1")


class SmoothedClassifier:
    """The smoothed classifier g of a base classifier f.

    Parameters
    ----------
    classifier : the base classifier (e.g. ``OnnxClassifier``): model inputs [B, ...] -> classes [B]; it must have
        every member of :class:`rs_onnx.sampling.Classifier` (subclass ``HostClassifier`` for the host defaults).
    sigma : standard deviation of the Gaussian noise, in [0,1] pixel units (before normalisation).
    preprocess : how x + delta becomes the model input; default: no scaling, the model's layout.
    seed : seeds every noise stream; None draws fresh entropy, kept in ``self.entropy``.
    batch_size : noisy samples per model call.
    noise_threads : threads drawing noise (default: by the classifier's device, see default_noise_threads).
    audit : certify soundly against an adversarial model (:mod:`rs_onnx.audit`): exact grid noise added in
        integers to 8-bit inputs, batches only when the graph provably keeps rows apart; then ``seed`` must
        be None (fresh entropy, drawn here, after the model was loaded) unless ``audit_seed_override``
        (reproducing an earlier audit from its recorded entropy).
    """

    def __init__(self, classifier, sigma: float, preprocess: PreprocessSpec | None = None, seed: int | None = None,
                 batch_size: int = 1000, noise_threads: int | None = None, *, audit: bool = False,
                 audit_seed_override: bool = False) -> None:
        if not (np.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"sigma={sigma}: expected a positive noise level in [0,1] pixel units")
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size}: expected at least 1")
        if seed is not None and seed < 0:
            raise ConfigError(f"seed {seed}: expected a non-negative integer")
        if audit and seed is not None and not audit_seed_override:
            raise ConfigError(f"seed {seed} with audit: a model can be built to memorise a published seed's noise; "
                              "expected no seed (fresh entropy is drawn and recorded), or the explicit override "
                              "(audit_seed_override / --audit-seed-override) to reproduce an earlier audit")
        check_classifier(classifier)
        self.classifier = classifier
        self.sigma = float(sigma)
        self.audit = bool(audit)
        self.audit_info: dict | None = None
        if self.audit:
            from .audit import GridNoise, classifier_batch_independence

            self._grid = GridNoise(self.sigma)
            scan = classifier_batch_independence(classifier)
            self.audit_info = {"sigma_exact": self._grid.sigma_text, "grid_k": self._grid.k, "grid_M": self._grid.M,
                               "seed_override": seed is not None, **scan}
        self.spec = preprocess or PreprocessSpec()
        self._entropy = noise.new_entropy() if seed is None else int(seed)
        self.batch_size = int(batch_size)
        self.noise_threads = default_noise_threads(classifier.device) if noise_threads is None else int(noise_threads)
        self._pre: Preprocessor | None = None

    @property
    def entropy(self) -> int:
        """The seed of every noise stream (``seed``, or fresh entropy); fixed at construction."""
        return self._entropy

    def preprocessor(self, image_shape) -> Preprocessor:
        """The Preprocessor for images of ``image_shape`` (built once, reused)."""
        image_shape = tuple(int(d) for d in image_shape)
        if self._pre is None or self._pre.image_shape != image_shape:
            c = self.classifier
            if self.audit:
                from .audit import AuditPreprocessor

                self._pre = AuditPreprocessor(self.spec, image_shape, c.input_shape, c.input_dtype, self._grid)
            else:
                self._pre = Preprocessor(self.spec, image_shape, c.input_shape, c.input_dtype)
        return self._pre

    def sampler(self, image_shape) -> Sampler:
        """A :class:`~rs_onnx.sampling.Sampler` over this classifier's sigma, entropy, batch size and threads,
        for images of ``image_shape`` (in audit mode an :class:`~rs_onnx.audit.AuditSampler`, one sample per
        call unless the graph scan proved the rows independent)."""
        if self.audit:
            from .audit import AuditSampler

            batched = bool(self.audit_info and self.audit_info["batched"])
            return AuditSampler(self.classifier, self.preprocessor(image_shape), self.sigma,  # type: ignore[arg-type]
                                self.entropy, self.batch_size if batched else 1, self.noise_threads)
        return Sampler(self.classifier, self.preprocessor(image_shape), self.sigma, self.entropy,
                       self.batch_size, self.noise_threads)

    def count(self, xs: Sequence[np.ndarray], examples: Sequence[int], phase: int, n: int,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Counts of ``n`` noisy samples of each image of ``xs`` (one shape, in [0,1]) under noise ``phase``.

        ``examples`` select the noise streams. Returns int64 [len(xs), K + 1]; column K counts non-finite
        model outputs.
        """
        sampler = self.sampler(np.shape(xs[0]))
        tasks = [Task(sampler.pre.clean(x), int(e), phase, n) for x, e in zip(xs, examples)]
        return sampler.count(tasks, progress)

    def certify_many(self, xs: Sequence[np.ndarray], n0: int, n: int, alpha: float,
                     examples: Sequence[int] | None = None,
                     progress: Callable[[int], None] | None = None, bound: str = "cohen") -> list[Certificate]:
        """CERTIFY for several images at once, packed into shared batches.

        xs : images of one shape (e.g. [C,H,W]) in [0,1]. examples : their indices in the data set, which
        select their noise streams (default 0, 1, ...). Returns one Certificate per image.
        """
        _check_args(n0, n, alpha)
        if bound not in ("cohen", "best"):
            raise ConfigError(f"bound={bound!r}: expected 'cohen' or 'best'")
        examples = list(range(len(xs))) if examples is None else list(examples)
        if len(xs) == 0:
            return []
        counts0 = self.count(xs, examples, noise.SELECT, n0, progress)
        counts1 = self.count(xs, examples, noise.ESTIMATE, n, progress)
        out = []
        for c0, c1 in zip(counts0, counts1):
            guess = stats.select(c0)
            n_a = int(c1[guess]) if guess != ABSTAIN else 0
            p_lower = stats.clopper_pearson_lower(n_a, n, alpha)
            p_b, r_two, r_tv = 1.0, 0.0, 0.0
            if guess != ABSTAIN:  # non-finite outputs count as one more rival outcome
                p_a_split, p_b, r_two = map(float, bounds.two_class_certificate(c1, guess, alpha, self.sigma))
                r_tv = float(bounds.tv_radius(p_a_split, p_b, self.sigma))
            if bound == "best":
                radius = float(bounds.best_radius(c1, guess, alpha, self.sigma)) if guess != ABSTAIN else 0.0
                pred = guess if radius > 0 else ABSTAIN
            elif p_lower < 0.5:
                pred, radius = ABSTAIN, 0.0
            else:
                pred, radius = guess, stats.cohen_radius(p_lower, self.sigma)
            nonfinite = int(c0[-1] + c1[-1])
            out.append(Certificate(pred, radius, p_lower, n_a, n, n0, guess, nonfinite, p_b, r_two, r_tv, c1))
        return out

    def certify(self, x: np.ndarray, n0: int, n: int, alpha: float, example: int = 0) -> Certificate:
        """CERTIFY (Cohen et al. 2019, Algorithm CERTIFY) for one image x in [0,1]."""
        return self.certify_many([x], n0, n, alpha, [example])[0]

    def predict_many(self, xs: Sequence[np.ndarray], n: int, alpha: float,
                     examples: Sequence[int] | None = None,
                     progress: Callable[[int], None] | None = None) -> list[Prediction]:
        """PREDICT for several images: abstain unless the top two counts differ at level alpha."""
        _check_args(None, n, alpha)
        examples = list(range(len(xs))) if examples is None else list(examples)
        if len(xs) == 0:
            return []
        counts = self.count(xs, examples, noise.PREDICT, n, progress)
        out = []
        for c in counts:
            a, n_a, _, n_b = stats.top_two(c[:-1])
            p = stats.binomial_pvalue(n_a, n_a + n_b) if n_a + n_b > 0 else 1.0
            out.append(Prediction(a if p <= alpha else ABSTAIN, p, n_a, n_b, n, int(c[-1])))
        return out

    def predict(self, x: np.ndarray, n: int, alpha: float, example: int = 0) -> Prediction:
        """PREDICT (Cohen et al. 2019, Algorithm PREDICT) for one image x in [0,1]."""
        return self.predict_many([x], n, alpha, [example])[0]
