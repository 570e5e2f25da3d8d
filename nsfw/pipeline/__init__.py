"""An image (or, later, a video) -> its prediction, with no Flask in sight.

- flow.py: who may fetch, parse or compute right now (download slots, single flight, the model's lock).
- service.py: one image -> scores (result cache, decode, model), then the verdict and the hooks
  after it (the review queue).
- batch.py: a batch's items, each as a single request, under one deadline.
- verdict.py: scores -> adult / unknown / safe, and the second tier (pure but for the endpoint call).

Imports point down: batch -> service -> flow, verdict -> fetch, imaging, model, cache -> config, errors.
"""
