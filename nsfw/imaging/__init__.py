"""Image bytes -> model-ready arrays and the review picture. No Flask, no TensorFlow.

One room per job; imports point one way (budget <- decode <- recipes, thumbnail; resize <- recipes):

- budget.py: what a decode may cost, priced from the container headers before any pixel exists.
- decode.py: sniffing and opening (the bytes decide the format), Pillow's process-wide limits
  (harden_pillow), EXIF orientation, modes as the resizers read them, frame selection and deadlines,
  and decode_frames, which reads the frames of a still or animated image one at a time.
- resize.py: the model-exact resizes (nsfwjs, gantman, TensorFlow 2's half-pixel bilinear).
- recipes.py: per model, one decoded frame -> the input it was trained on (model_input), and bytes ->
  those inputs (preprocess, preprocess_frames).
- thumbnail.py: one decoded frame -> the review queue's JPEG (picture), and bytes -> those JPEGs.

How bytes walk through them: bytes -> budget (read_layout, plan) -> decode (decode_frames, each frame
passed on as soon as it is decoded) -> recipes (resize) -> the model's input; or -> thumbnail for the
picture a moderator sees.
"""

from __future__ import annotations
