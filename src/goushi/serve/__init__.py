"""The OpenAI-compatible HTTP API (`goushi serve`). Needs the `serve` extra (FastAPI, uvicorn).

    goushi.serve.limits    Limits: body size, prompt length, max_tokens, n, concurrency, queue
    goushi.serve.protocol  request bodies checked field by field, errors in OpenAI's shape
    goushi.serve.app       build_app(models, api_key=None, limits=None) -> FastAPI
    goushi.serve.server    serve_forever(app, host, port); start_background(app) -> Background(url, stop())
"""
