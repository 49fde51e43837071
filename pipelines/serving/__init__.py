"""`serve` and `chat`: a trained artifact answering, over an OpenAI-compatible HTTP API or in the
terminal, through one batching generation engine.

    target.py   command-line target -> model directory and name (no torch)
    text.py     token ids -> text deltas, cut at stop strings (no torch)
    batch.py    the running batch: one KV cache, rows joining and leaving (torch)
    engine.py   the background thread that owns the model and serves requests
    api.py      the FastAPI app: /v1/models, /v1/chat/completions, /v1/completions
    cli.py      `python -m pipelines serve | chat` and the terminal chat
"""
