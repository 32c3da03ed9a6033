"""Side-by-side benchmarks of multiplex and the peer ASGI servers that are installed
(Hypercorn with asyncio and uvloop, Uvicorn, Granian, Daphne) on the same raw ASGI app.

    python -m interop.benchmarks [--smoke] [--rounds 3] [--scenarios h1,h2c] [--servers ...]

See `__main__.py` for the method and results/latest.md for the last full run.
"""
