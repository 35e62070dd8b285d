"""Shadow deployment (REQ-DEP-01): sampled live requests replayed on a candidate model and compared.

``spec``: the catalog's ``shadow`` field and the case a mirrored request becomes; ``budget``: how
many cases may wait at once; ``mirror``: the sampling and hand-off to the ``shadow`` task queue
(``apps/worker-shadow`` replays and compares; docs/shadow.md).
"""
