"""What both sides share: records, settings, metrics, retries and the concurrency seam.

Layering is one-way: `core` imports neither `destinations` nor `proxy`;
`destinations` imports `core` only; `proxy` imports both (tests/test_layering.py).
"""
