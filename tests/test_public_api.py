import pipeline


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
    assert {"embed", "search", "ask", "PipelineError", "Chunk", "load_config"} <= set(pipeline.__all__)


def test_error_tree() -> None:
    assert issubclass(pipeline.RateLimitError, pipeline.ProviderError)
    assert issubclass(pipeline.ProviderError, pipeline.PipelineError)
    assert pipeline.RateLimitError("x").retryable and not pipeline.AuthError("x").retryable
    err = pipeline.ServerError("boom", provider="gigachat", endpoint="/embeddings", status=503)
    assert str(err) == "gigachat /embeddings: HTTP 503: boom"
