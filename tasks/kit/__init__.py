"""The stage kit: what turns a stage function into a cached, locked, retrying Prefect task (``stage``),
where its outputs go (``outputs``), which model and device it uses (``models``), the GPU guard
(``gpu``), per-key locks (``locks``), stage-run records and retries (``runs``) and cache keys (``caching``)."""
