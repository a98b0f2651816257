"""A denoiser composed with its classifier (rs_onnx.compose), cached by content in this user's private folder."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError, ModelError
from .guard import escape
from .results import sha256_file

log = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """This user's private cache folder for composed models (the platform's user cache dir, mode 0700),
    or None when it cannot be made private (then nothing is cached)."""
    try:
        import platformdirs

        base = Path(platformdirs.user_cache_dir("rs-onnx", appauthor=False))
    except ImportError:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rs-onnx"
    path = base / "composed"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            log.warning("composed-model cache %s belongs to another user; not caching", path)
            return None
        if st.st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as e:
        log.info("no composed-model cache (%s); composing for this run only", e)
        return None
    return path


def composed_model(cfg: RunConfig) -> Path:
    """``cfg.denoiser`` composed with ``cfg.model`` and its preprocessing (rs_onnx.compose), cached by content.

    The cache is this user's private folder (:func:`cache_dir`); a cached file is used only when its sha256
    matches the one recorded when it was composed (else it is composed again); without a private folder
    the composition goes to a private temporary folder for this process.
    """
    from .compose import compose_files

    assert cfg.denoiser is not None and cfg.model is not None  # prepare() checked them
    for what, value in (("denoiser", cfg.denoiser), ("model", cfg.model)):
        p = Path(value)
        if not p.is_file():
            raise ModelError(
                f"{what} {escape(value)}: {'a directory' if p.is_dir() else 'no such file'}; expected an .onnx file"
            )
    spec = cfg.preprocess_spec()
    key = hashlib.sha256(
        "|".join(
            [sha256_file(cfg.denoiser), sha256_file(cfg.model), repr(spec), str(cfg.input_name), str(cfg.input_shape)]
        ).encode()
    ).hexdigest()[:20]
    folder = cache_dir()
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="rs-onnx-composed-"))  # mode 0700, this process only
    path, digest_path = folder / f"{key}.onnx", folder / f"{key}.sha256"
    try:
        recorded = digest_path.read_text(encoding="ascii").strip()
        cached = path.is_file() and not path.is_symlink() and sha256_file(path) == recorded
    except (OSError, UnicodeDecodeError):
        cached = False
    if not cached:
        tmp = path.with_name(f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.onnx")
        try:
            compose_files(
                cfg.denoiser,
                cfg.model,
                tmp,
                spec,
                classifier_input_name=cfg.input_name,
                classifier_input_shape=None if cfg.input_shape is None else tuple(cfg.input_shape),
            )
            digest = sha256_file(tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _write_text_atomic(digest_path, digest + "\n")
        if sha256_file(path) != digest:  # replaced under us
            raise ConfigError(f"composed model {path} changed while it was written; expected a private cache folder")
    log.info("certifying denoiser %s + classifier %s, composed into %s", cfg.denoiser, cfg.model, path)
    return path


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="ascii")
    os.replace(tmp, path)
