"""SmoothedClassifier: Cohen et al. 2019's PREDICT and CERTIFY over any base classifier.

g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I), sigma in [0,1] pixel units; or delta uniform
on [-sigma, sigma]^d, or Laplace of scale sigma per value (``noise="uniform"`` / ``"laplace"``, sigma then
being lambda, as in ``export/train.py``), certified in l1 (Yang et al. 2020; Teng et al. 2020).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import bounds, noise, stats
from .errors import ConfigError, DataError
from .inputs import (
    as_int,
    check_alpha,
    check_magnitude,
    check_sigma,
    looks_like_0_255,
    pixels,
)
from .noise import get_kind as _get_kind
from .noise import new_entropy as _new_entropy
from .preprocess import Preprocessor, PreprocessSpec
from .sampling import DEFAULT_INDEX_CLASSES, Sampler, Task, check_classifier, default_noise_threads

ABSTAIN = stats.ABSTAIN
BEST_ALPHA_SPLIT = 0.5
"""With bound="best", the share of alpha spent on p_a_lower (the rest bounds p_b_upper)."""
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer for one example; radii in [0,1] pixel units, 0 on abstain.

    ``radius`` is in the noise's native norm (``bounds.NATIVE_NORM``: l2 for gaussian, l1 for uniform and
    laplace); ``radius_l1``, ``radius_l2``, ``radius_linf`` restate it in each norm (same event, see
    :func:`rs_onnx.bounds.norm_radii`). ``radius_2class`` and ``radius_tv`` are l2 and Gaussian only (0
    for other noises).

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
    noise: str = "gaussian"
    radius_l1: float = 0.0
    radius_l2: float = 0.0
    radius_linf: float = 0.0
    alpha_p_a: float | None = None  # the level of p_a_lower: alpha, or alpha/2 with bound="best" (TSV alpha_pA)


@dataclass(frozen=True)
class Prediction:
    """PREDICT's answer: the top class, or ABSTAIN when the binomial test's p-value exceeds alpha."""

    predict: int
    p_value: float
    count_a: int
    count_b: int
    n: int
    nonfinite: int


def native_radius(p_a_lower: float, noise_kind: str, sigma: float) -> float:
    """The certified radius from p_a_lower in the native norm of ``noise_kind`` (l2 gaussian, l1 otherwise),
    in the units of ``sigma``; 0 if p_a_lower <= 1/2."""
    if noise_kind == "gaussian":
        return stats.cohen_radius(p_a_lower, sigma)
    return float(bounds.radius(p_a_lower, noise_kind, sigma, bounds.NATIVE_NORM[noise_kind]))


def certificate(
    guess: int,
    n_a: int,
    k_other: int,
    n: int,
    n0: int,
    nonfinite: int,
    alpha: float,
    sigma: float,
    noise_kind: str,
    dim: int,
    bound: str = "cohen",
) -> Certificate:
    """CERTIFY's answer from its counts: the one computation behind every certify row (``certify_many``, and
    ``rs-onnx verify``, which recomputes a row from its columns).

    ``guess``: the selection's class (ABSTAIN: no sample gave a class); ``n_a``: its count among the ``n``
    estimation samples; ``k_other``: the largest other count among them (non-finite outputs included, a rival
    outcome; the two-class bound's runner-up); ``nonfinite``: non-finite outputs of both phases; ``dim``: noisy
    values per input (the norm conversions). ``counts`` of the result is empty (the caller may set it).
    """
    gaussian = noise_kind == "gaussian"
    # with bound="best" the radius uses p_a_lower at alpha/2: the column shows that bound, not alpha's
    alpha_a = alpha * BEST_ALPHA_SPLIT if bound == "best" else alpha
    p_lower = stats.clopper_pearson_lower(n_a, n, alpha_a)
    p_b, r_two, r_tv, p_a_split = 1.0, 0.0, 0.0, 0.0
    if guess != ABSTAIN and gaussian:  # non-finite outputs count as one more rival outcome
        p_a_split, p_b, r_two = map(
            float, bounds.two_class_from_top(n_a, k_other, n, alpha, sigma, alpha_split=BEST_ALPHA_SPLIT)
        )
        r_tv = float(bounds.tv_radius(p_a_split, p_b, sigma))
    if bound == "best":
        radius = float(bounds.best_of(p_a_split, r_two, sigma)) if guess != ABSTAIN else 0.0
        pred = guess if radius > 0 else ABSTAIN
    elif p_lower < 0.5:
        pred, radius = ABSTAIN, 0.0
    else:
        pred, radius = guess, native_radius(p_lower, noise_kind, sigma)
    if not gaussian and guess != ABSTAIN:  # a valid bound on every other class, same event
        p_b = float(min(1.0, np.nextafter(1.0 - p_lower, 2.0)))
    lp = bounds.norm_radii(p_lower, radius, noise_kind, sigma, dim)
    return Certificate(
        pred,
        radius,
        p_lower,
        n_a,
        n,
        n0,
        guess,
        nonfinite,
        p_b,
        r_two,
        r_tv,
        np.zeros(0, np.int64),
        noise_kind,
        lp["l1"],
        lp["l2"],
        lp["linf"],
        alpha_a,
    )


def prediction(top: int, count_a: int, count_b: int, n: int, nonfinite: int, alpha: float) -> Prediction:
    """PREDICT's answer from its counts (the top two among ``n`` samples): ``top`` when the two-sided binomial
    test of count_a against count_b has p-value <= alpha, else ABSTAIN (also used by ``rs-onnx verify``)."""
    p = stats.binomial_pvalue(count_a, count_a + count_b) if count_a + count_b > 0 else 1.0
    return Prediction(top if p <= alpha else ABSTAIN, p, count_a, count_b, n, nonfinite)


def _check_args(n0: int | None, n: int, alpha: float) -> tuple[int | None, int, float]:
    """(n0, n, alpha) checked: integers >= 1 (no silent truncation of 1.5), 0 < alpha < 1."""
    return (None if n0 is None else as_int("n0", n0, 1)), as_int("n", n, 1), check_alpha(alpha)


class SmoothedClassifier:
    """The smoothed classifier g of a base classifier f.

    Parameters
    ----------
    classifier : OnnxClassifier or Classifier
        The base classifier: model inputs [B, ...] -> classes [B]. It must have every member of
        :class:`rs_onnx.sampling.Classifier` (subclass ``HostClassifier`` for the host defaults).
    sigma : float
        Noise scale in [0,1] pixel units (before normalisation): the standard deviation for
        ``noise="gaussian"``, the half-width lambda of U[-lambda, lambda] per value for ``"uniform"``, the
        scale lambda (density exp(-|z|/lambda) / (2 lambda)) for ``"laplace"``.
    preprocess : PreprocessSpec, optional
        How x + delta becomes the model input; default: no scaling, the model's layout.
    seed : int, optional
        Seeds every noise stream; None draws fresh entropy, kept in ``self.entropy``.
    batch_size : int
        Noisy samples per model call.
    noise_threads : int, optional
        Threads drawing noise (default: by the classifier's device, see default_noise_threads).
    num_classes : int, optional
        The model's class count K, fixed before counting (default: ``classifier.num_classes``; for index
        outputs of unknown range 1000). Indices outside 0..K-1 count as no class.
    noise : str
        gaussian (default), uniform or laplace (any name in ``rs_onnx.noise.KINDS``); audit is Gaussian only.
    audit : bool
        Certify soundly against an adversarial model (:mod:`rs_onnx.audit`): exact grid noise added in
        integers to 8-bit inputs, batches only when the graph provably keeps rows apart; then ``seed`` must
        be None (fresh entropy, drawn here, after the model was loaded) unless ``audit_seed_override``
        (reproducing an earlier audit from its recorded entropy).
    """

    def __init__(
        self,
        classifier,
        sigma: float,
        preprocess: PreprocessSpec | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
        noise_threads: int | None = None,
        num_classes: int | None = None,
        *,
        audit: bool = False,
        audit_seed_override: bool = False,
        noise: str = "gaussian",
        batch_check: dict | None = None,
    ) -> None:
        self.noise = _get_kind(noise).name
        if audit and self.noise != "gaussian":
            raise ConfigError(
                f"audit with noise={self.noise}: the audit's exact grid noise is Gaussian; expected noise='gaussian'"
            )
        sigma = check_sigma(sigma)
        batch_size = as_int("batch_size", batch_size, 1)
        seed = None if seed is None else as_int("seed", seed, 0)
        noise_threads = None if noise_threads is None else as_int("noise_threads", noise_threads, 0)
        self.num_classes = None if num_classes is None else as_int("num_classes", num_classes, 1)
        if audit and seed is not None and not audit_seed_override:
            raise ConfigError(
                f"seed {seed} with audit: a model can be built to memorise a published seed's noise; "
                "expected no seed (fresh entropy is drawn and recorded), or the explicit override "
                "(audit_seed_override / --audit-seed-override) to reproduce an earlier audit"
            )
        check_classifier(classifier)
        self.classifier = classifier
        self.sigma = float(sigma)
        self.audit = bool(audit)
        self.audit_info: dict | None = None
        if self.audit:
            from .audit import GridNoise, classifier_batch_independence

            self._grid = GridNoise(self.sigma)
            scan = classifier_batch_independence(classifier)
            self.audit_info = {
                "sigma_exact": self._grid.sigma_text,
                "grid_k": self._grid.k,
                "grid_M": self._grid.M,
                "seed_override": seed is not None,
                **scan,
            }
        self.spec = preprocess or PreprocessSpec()
        self._entropy = _new_entropy() if seed is None else int(seed)
        self.batch_size = int(batch_size)
        self.noise_threads = default_noise_threads(classifier.device) if noise_threads is None else int(noise_threads)
        self._pre: Preprocessor | None = None
        self._warned_0_255 = False
        self.batch_check = batch_check  # None: verify_batches checks before the first count

    def images(self, xs, examples=None) -> tuple[list[np.ndarray], list[int]]:
        """Checked images in [0,1] pixel units and their example indices (see :func:`rs_onnx.inputs.pixels`).

        Integer images (uint8 0..255) are divided by 255, as the CLI does; floats must be finite and of a
        size float32 resolves at sigma; an image-shaped float input in [0, 255] is used as given, with a
        one-time warning. ``examples`` (default 0, 1, ...) must give one non-negative integer per image.
        """
        xs = list(xs)
        if examples is None:
            examples = list(range(len(xs)))
        else:
            examples = [as_int("example index", e, 0) for e in examples]
            if len(examples) != len(xs):
                raise ConfigError(
                    f"{len(examples)} examples for {len(xs)} images; expected one example index per image"
                )
        out: list[np.ndarray] = []
        for i, x in enumerate(xs):
            raw = np.asarray(x)
            if not self._warned_0_255 and looks_like_0_255(raw):
                self._warned_0_255 = True
                logger.warning(
                    "image %d is float with values up to %g: it looks like 0..255 data, but floats are "
                    "taken as [0,1] pixel units (sigma=%g is in those units); pass uint8 images (divided "
                    "by 255) or divide by 255 yourself",
                    i,
                    float(raw.max()),
                    self.sigma,
                )
            px = pixels(raw, f"image {i}")
            if out and px.shape != out[0].shape:
                raise DataError(f"image {i} has shape {list(px.shape)}; expected {list(out[0].shape)} like image 0")
            if px.size:
                check_magnitude(float(np.abs(px).max()), self.sigma, f"image {i}")
            out.append(px)
        return out, examples

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
            return AuditSampler(
                self.classifier,
                self.preprocessor(image_shape),  # type: ignore[arg-type]
                self.sigma,
                self.entropy,
                self.batch_size if batched else 1,
                self.noise_threads,
                num_classes=self.num_classes,
            )
        return Sampler(
            self.classifier,
            self.preprocessor(image_shape),
            self.sigma,
            self.entropy,
            self.batch_size,
            self.noise_threads,
            noise_kind=self.noise,
            num_classes=self.num_classes,
        )

    def dim(self, image_shape) -> int:
        """Number of noisy values per input (the d of the l1/linf conversions)."""
        return int(np.prod(self.preprocessor(image_shape).model_shape))

    def native_radius(self, p_a_lower: float) -> float:
        """The certified radius from p_a_lower in the noise's native norm (l2 gaussian, l1 otherwise); 0 if <= 1/2."""
        return native_radius(p_a_lower, self.noise, self.sigma)

    def verify_batches(self, x: np.ndarray, samples: int, runner=None, total: int | None = None) -> dict | None:
        """Once per instance, for an ONNX classifier: :func:`rs_onnx.checks.check_batch_equivalence` on noisy
        copies of ``x`` at the batch size a count of ``samples`` samples uses; ModelError when batches change the
        classes and the model cannot run one sample at a time. When it can, ``classifier`` becomes its
        ``one_by_one()`` copy (the caller's classifier object is left as it is). The record is kept in
        ``batch_check``. ``runner`` and ``total``: see :func:`rs_onnx.checks.check_batches_once`."""
        if self.batch_check is None:
            from .checks import check_batches_once

            record = check_batches_once(self, x, samples, runner, total)
            if record is not None and record["result"] == "per-sample fallback":
                self.classifier = self.classifier.one_by_one()
            self.batch_check = record
        return self.batch_check

    def count(
        self,
        xs: Sequence[np.ndarray],
        examples: Sequence[int],
        phase: int,
        n: int,
        progress: Callable[[int], None] | None = None,
        first_block: int = 0,
    ) -> np.ndarray:
        """Counts of ``n`` noisy samples of each image of ``xs`` (one shape; floats in [0,1], or uint8 0..255,
        divided by 255: see :meth:`images`) under noise ``phase``.

        ``examples`` select the noise streams (one per image). ``first_block``: the samples are those of the
        stream from noise block ``first_block`` on (``sampler(shape).block_size`` samples a block), so counts
        of consecutive pieces that start at whole blocks add up to the count of the whole (Ray splits one
        example this way). Returns int64 [len(xs), K + 1]; column K counts samples with no class
        (non-finite model outputs, class indices outside 0..K-1).
        """
        n = as_int("n", n, 0)
        xs, examples = self.images(xs, examples)
        if not xs:
            return np.zeros(
                (0, (self.num_classes or self.classifier.num_classes or DEFAULT_INDEX_CLASSES) + 1), np.int64
            )
        self.verify_batches(xs[0], n * len(xs))
        sampler = self.sampler(np.shape(xs[0]))
        first_block = as_int("first_block", first_block, 0)
        tasks = [Task(sampler.pre.clean(x), int(e), phase, n, first_block) for x, e in zip(xs, examples)]
        return sampler.count(tasks, progress)

    def certify_many(
        self,
        xs: Sequence[np.ndarray],
        n0: int,
        n: int,
        alpha: float,
        examples: Sequence[int] | None = None,
        progress: Callable[[int], None] | None = None,
        bound: str = "cohen",
    ) -> list[Certificate]:
        """CERTIFY for several images at once, packed into shared batches.

        Parameters
        ----------
        xs : sequence of arrays
            Images of one shape (e.g. [C,H,W]): floats in [0,1] pixel units, or uint8 0..255 (divided by
            255, as the CLI does; see :meth:`images`).
        n0, n : int
            Selection and estimation samples per image.
        alpha : float
            Failure probability of each certificate.
        examples : sequence of int, optional
            Their indices in the data set, which select their noise streams (default 0, 1, ...).

        Returns
        -------
        list of Certificate
            One per image.
        """
        n0, n, alpha = as_int("n0", n0, 1), *_check_args(None, n, alpha)[1:]
        if bound not in ("cohen", "best"):
            raise ConfigError(f"bound={bound!r}: expected 'cohen' or 'best'")
        if bound == "best" and self.noise != "gaussian":
            raise ConfigError(
                f"bound='best' with noise={self.noise}: the two-class bound is Gaussian only; expected bound='cohen'"
            )
        xs, examples = self.images(xs, examples)
        if len(xs) == 0:
            return []
        self.verify_batches(xs[0], max(n0, n) * len(xs))
        counts0 = self.count(xs, examples, noise.SELECT, n0, progress)
        counts1 = self.count(xs, examples, noise.ESTIMATE, n, progress)
        return self.certificates(counts0, counts1, n0, n, alpha, self.dim(np.shape(xs[0])), bound)

    def certificates(
        self, counts0: np.ndarray, counts1: np.ndarray, n0: int, n: int, alpha: float, dim: int, bound: str = "cohen"
    ) -> list[Certificate]:
        """CERTIFY's answers from its counts: ``counts0`` (selection, n0 samples each) and ``counts1``
        (estimation, n samples each), int64 [examples, K + 1] as :meth:`count` returns them; ``dim`` is the
        number of noisy values per input (:meth:`dim`). The same answers whether the counts came from one
        process or were added up from pieces counted elsewhere."""
        out = []
        for c0, c1 in zip(np.asarray(counts0, np.int64), np.asarray(counts1, np.int64)):
            guess = stats.select(c0)
            n_a = int(c1[guess]) if guess != ABSTAIN else 0
            # the largest other count (non-finite outputs count as one more rival outcome)
            k_other = int(np.delete(c1, guess).max()) if guess != ABSTAIN else 0
            cert = certificate(
                guess, n_a, k_other, n, n0, int(c0[-1] + c1[-1]), alpha, self.sigma, self.noise, dim, bound
            )
            out.append(dataclasses.replace(cert, counts=c1))
        return out

    def certify(self, x: np.ndarray, n0: int, n: int, alpha: float, example: int = 0) -> Certificate:
        """CERTIFY (Cohen et al. 2019, Algorithm CERTIFY) for one image x: floats in [0,1], or uint8 0..255 (/255)."""
        return self.certify_many([x], n0, n, alpha, [example])[0]

    def predict_many(
        self,
        xs: Sequence[np.ndarray],
        n: int,
        alpha: float,
        examples: Sequence[int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """PREDICT for several images: abstain unless the top two counts differ at level alpha."""
        _, n, alpha = _check_args(None, n, alpha)
        xs, examples = self.images(xs, examples)
        if len(xs) == 0:
            return []
        self.verify_batches(xs[0], n * len(xs))
        return self.predictions(self.count(xs, examples, noise.PREDICT, n, progress), n, alpha)

    def predictions(self, counts: np.ndarray, n: int, alpha: float) -> list[Prediction]:
        """PREDICT's answers from its counts (int64 [examples, K + 1] of n samples each, :meth:`count`)."""
        out = []
        for c in np.asarray(counts, np.int64):
            a, n_a, _, n_b = stats.top_two(c[:-1])
            out.append(prediction(a, n_a, n_b, n, int(c[-1]), alpha))
        return out

    def predict(self, x: np.ndarray, n: int, alpha: float, example: int = 0) -> Prediction:
        """PREDICT (Cohen et al. 2019, Algorithm PREDICT) for one image x: floats in [0,1], or uint8 0..255 (/255)."""
        return self.predict_many([x], n, alpha, [example])[0]
