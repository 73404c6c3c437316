"""Images: describe corpus images (.png, .jpg) with a vision chat model, so the descriptions can be indexed.

Sync, one image per message; descriptions are cached on disk by (model, endpoint, prompt, image bytes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from .config import Config
from .errors import ConfigError, ContentRefusedError
from .providers import chat_model, check_credentials, provider_endpoint
from .providers.chat import ChatModel
from .records import ModelSpec

__all__ = ["DESCRIBE_PROMPT", "ImageDescriber", "image_describer"]

log = logging.getLogger("pipeline.images")

DESCRIBE_PROMPT = (
    "Describe this image for a search index, in plain prose: what it shows, its subject and setting, any "
    "charts, diagrams or tables and what they say, and transcribe any visible text word for word. Use the "
    "language of the text in the image, else English."
)


class ImageDescriber:
    """(image path, corpus-relative path) -> description; the callable sources.iter_documents takes."""

    def __init__(self, spec: ModelSpec, config: Config) -> None:
        self.spec = spec
        self.config = config
        self.described = 0  # calls made to the vision model (cache hits excluded)
        self._backend: ChatModel | None = None
        self._dir = config.cache_dir / "image-descriptions"
        self._salt = f"{spec.provider}|{provider_endpoint(spec, config)}|{spec.name}|{DESCRIBE_PROMPT}"

    def _key(self, data: bytes) -> str:
        return hashlib.sha256(self._salt.encode() + b"\0" + data).hexdigest()

    def __call__(self, path: Path, rel: str) -> str:
        """The image's description. Raises ProviderError subclasses (ContentRefusedError on a refusal)."""
        key = self._key(path.read_bytes())
        cached = self._dir / f"{key}.txt"
        try:
            return cached.read_text(encoding="utf-8")
        except OSError:
            pass
        if self._backend is None:
            self._backend = chat_model(self.spec, self.config)
        reply = self._backend.describe_image(DESCRIBE_PROMPT, path)
        self.described += 1
        if reply.finish_reason == "blacklist":
            raise ContentRefusedError(f"{self.spec.name} refused to describe it (finish_reason blacklist)")
        text = reply.content.strip()
        if reply.finish_reason == "length":
            log.warning("%s: the description was cut at the model's length limit", rel)
        if text:
            self._store(cached, text)
        return text

    def _store(self, path: Path, text: str) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError as e:  # a cache that cannot be written only costs a call next time
            log.warning("cannot cache an image description in %s: %s", path.parent, e)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None


def image_describer(config: Config) -> ImageDescriber | None:
    """A describer for [images] vision_model, or None when none is set (images are then skipped).

    Raises ConfigError for an unknown model, one without vision, or a GigaChat model without credentials.
    """
    name = config.images.vision_model.strip()
    if not name:
        return None
    spec = config.registry.get(name)
    if spec is None or spec.kind != "chat" or not spec.vision:
        vision = ", ".join(sorted(n for n, s in config.registry.items() if s.kind == "chat" and s.vision))
        raise ConfigError(f"[images] vision_model: {name!r} is not a chat model that takes images; use one of: "
                          f"{vision}")
    check_credentials(spec, config, what="[images] vision_model",
                      alternative="leave vision_model empty to skip images")
    return ImageDescriber(spec, config)
