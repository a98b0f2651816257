"""--resume: whether an earlier run at ``out`` is the same model, configuration and data, and which of its
examples are done."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .config import RunConfig
from .errors import ConfigError, DataError
from .outputs import read_rows
from .results import meta_path, read_meta

if TYPE_CHECKING:
    from .run import Prepared

log = logging.getLogger(__name__)

# Keys that must match for --resume to continue a run.
RESUME_KEYS = (
    "sigma",
    "n0",
    "n",
    "alpha",
    "seed",
    "input_name",
    "output_name",
    "layout",
    "scale",
    "mean",
    "std",
    "dtype",
    "channel_order",
    "input_shape",
    "label",
    "bound",
    "extra_inputs",
    "sequential",
    "radii",
    "precision",
    "looks",
    "first_look",
    "final_share",
    "futility_beta",
    "guess",
    "denoiser",
    "fp16",
    "device_noise",
    "audit",
    "labels",
    "classes",
    "path_column",
    "label_column",
    "label_from_filename",
    "resize",
    "center_crop",
    "resample",
    "noise",
)


def _equal(a, b) -> bool:
    return a == b


def resume_state(
    out: Path, p: Prepared, mode: str, columns: tuple[str, ...], identity: dict | None
) -> tuple[set[int], Prepared]:
    """Indices already in ``out`` from an earlier run of the same model, configuration and data.

    Checks the meta file (configuration, model hash, data identity and selection), adopts the earlier
    run's noise entropy when no seed was given, and cuts a last row cut short by a crash (it is
    recomputed). Call with ``out``'s lock held. Returns the indices and the run to continue with (the
    earlier entropy adopted when no seed was given: see :meth:`Prepared.with_entropy`).
    """
    mp = meta_path(out)
    if not mp.exists():
        if out.exists() and out.stat().st_size > 0:
            raise ConfigError(f"--resume: {out} exists but {mp} does not; expected both from an earlier rs-onnx run")
        log.info("--resume: no earlier run at %s; starting one", out)
        return set(), p
    try:
        meta = read_meta(out)  # a JSON object, or DataError
        entropy = int(meta["entropy"])
    except (DataError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--resume: {mp} is not a readable rs-onnx meta file ({e})") from e
    old = meta.get("config", {})
    defaults = RunConfig().to_dict()  # keys an older meta file lacks had their default value
    now = p.cfg.to_dict()
    same = {"device_noise": lambda a, b: bool(a) == bool(b)}  # unset (auto) was false before 0.2
    changed = [k for k in RESUME_KEYS if not same.get(k, _equal)(old.get(k, defaults[k]), now[k])]
    was_device = str(((meta.get("model") or {}).get("signature") or {}).get("noise", "host")).startswith("device")
    if was_device != bool(getattr(p.classifier, "device_noise", False)) and "device_noise" not in changed:
        changed.append("noise source (host or device)")
    if meta.get("mode") != mode:
        changed.append("mode")
    if meta.get("model", {}).get("sha256") != p.classifier.sha256:
        changed.append("model (sha256)")
    old_identity = (meta.get("data") or {}).get("identity")
    if identity is not None and old_identity is None:
        log.warning("--resume: %s records no data identity (an older rs-onnx); the data cannot be checked", mp)
    elif identity is not None:
        # the same file and start/skip; a different end only extends or shortens the same selection (rows
        # outside the new one are refused below)
        if (old_identity or {}).get("kind") == "file" and identity.get("kind") == "manifest":  # an older rs-onnx
            log.warning("--resume: %s records the manifest only (an older rs-onnx): its images cannot be checked", mp)
            identity = {**identity, "kind": "file", "sha256": identity.get("manifest_sha256")}
        what = [k for k in ("sha256", "kind", "start", "skip") if (old_identity or {}).get(k) != identity.get(k)]
        if what:
            changed.append("data (" + ", ".join("contents" if k == "sha256" else k for k in what) + ")")
    if changed:
        raise ConfigError(
            f"--resume: {out} was made with a different {', '.join(changed)}; expected the same "
            "model, configuration and data (or start a new --out)"
        )
    if p.cfg.seed is None:
        p = p.with_entropy(entropy)
    if not out.exists():
        return set(), p
    if b"\n" in out.read_bytes()[: 1 << 16] or out.stat().st_size > 1 << 16:  # a header at least: check the rows
        from .verify import verify_file

        verdict = verify_file(out, inputs=False, torn_tail_ok=True)  # before anything is cut or appended
        if verdict.refused:
            raise ConfigError(
                f"--resume: {verdict.line()}; expected the rows as the run wrote them (`rs-onnx verify {out}` "
                "checks them; start a new --out)"
            )
    rows = read_rows(out, columns, mode)
    done = set(rows)
    if len(done) != len(rows):
        twice = sorted(i for i in done if rows.count(i) > 1)[:5]
        raise ConfigError(f"--resume: {out} holds examples {twice} more than once; expected each example once")
    foreign = sorted(done - set(p.indices))[:5]
    if foreign:
        raise ConfigError(
            f"--resume: {out} holds examples {foreign} outside this run's selection; expected the "
            "same data and start/end/skip"
        )
    return done, p
