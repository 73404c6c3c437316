import asyncio

import numpy as np

from pipeline.config import load_config
from pipeline.providers.local import LocalE5Provider


def test_local_model_vectors_are_normalised_multilingual_and_nul_safe() -> None:
    provider = LocalE5Provider(load_config(None, env={}).model_spec())
    ru, en, other, nul, head = provider.embed_sync(
        ["Москва — столица России.", "Moscow is the capital of Russia.", "Bake the bread at 230 degrees.",
         "a\0the rest of the text matters", "a"])
    assert np.allclose(np.linalg.norm(np.stack([ru, en]), axis=1), 1, atol=1e-3)
    assert ru @ en > ru @ other + 0.1  # a translation is closer than an unrelated sentence
    assert nul @ head < 0.95  # the text after a NUL byte is embedded, not dropped
    query = asyncio.run(provider.embed_batch(["capital of Russia"], is_query=True))
    assert query.shape == (1, 384) and query[0] @ en > query[0] @ other
