"""Which ImageNet weights a backbone starts from: a local mirror file, the Keras download, a given
file, or none, and an id of them for cache keys."""

from __future__ import annotations

import logging
from pathlib import Path

from tlpipe.model.backbones import Backbone
from tlpipe.paths import Paths
from tlpipe.util.hashing import sha256_file

log = logging.getLogger(__spec__.name)


def resolve_weights(
    backbone: Backbone, *, weights: str, weights_dir: str | None, alpha: float | None, seed: int, paths: Paths
) -> tuple[str | None, str]:
    """(what to pass to the Keras constructor, an id of the weights).

    The id is `none@seed<N>`, `imagenet@keras-<version>` or `sha256:<digest>` of a file; relative
    paths are resolved like every path in params (tlpipe.paths.Paths.resolve).
    """
    import keras

    if weights.lower() == "none":
        return None, f"none@seed{seed}"
    if weights.lower() == "imagenet":
        if weights_dir is not None:
            # A mirror is a cache of the download: missing, it is a warning, not an error, so the
            # default params work on a machine without ../shared.
            mirror = paths.resolve(weights_dir)
            candidate = mirror / backbone.weights_filename(alpha)
            if candidate.is_file():
                return str(candidate), f"sha256:{sha256_file(candidate)}"
            log.warning(
                "model.weights_dir=%r has no %s%s: using the Keras ImageNet download",
                weights_dir,
                candidate.name,
                "" if mirror.is_dir() else f" ({mirror} does not exist)",
            )
        return "imagenet", f"imagenet@keras-{keras.__version__}"
    path = paths.resolve(weights)
    if not path.is_file():
        raise ValueError(
            f"model.weights={weights!r}: file not found ({path}); expected imagenet, none, "
            f"or the path of a {backbone.name} no-top .weights.h5 file"
        )
    return str(path), f"sha256:{sha256_file(path)}"


def weights_file_name(path: str | None) -> str:
    """How reports name the weights: the file name only (never a machine's absolute path)."""
    if path in (None, "imagenet"):
        return path or "none"
    return Path(path).name
