"""The baseline: NSFW-FLASK's request path, for the benchmark only (never deployed).

NSFW-FLASK downloads the URL to a file, then calls GantMan's `nsfw_detector.predict.classify`:
Keras `load_img(path, target_size=(224, 224))` (Pillow NEAREST), `img_to_array / 255`, and
`model.predict` on the batch. This app does the same with the same weights (models/.../model.keras)
on TensorFlow, so the benchmark compares request paths, not models. It has none of the service's
limits: it is the thing we are measured against.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import keras
import numpy as np
import requests
from flask import Flask, jsonify, request

MODEL = Path(__file__).resolve().parents[1] / "models" / "mobilenet_v2" / "model.keras"
CLASSES = ("drawings", "hentai", "neutral", "porn", "sexy")

app = Flask(__name__)
model = keras.models.load_model(MODEL, compile=False)


@app.route("/predict", methods=["POST"])
def predict() -> object:
    response = requests.get(request.args["url"], timeout=30)
    fd, path = tempfile.mkstemp(suffix=".img")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(response.content)
        image = keras.utils.load_img(path, target_size=(224, 224))
        batch = np.asarray([keras.utils.img_to_array(image) / 255])
        probabilities = model.predict(batch, verbose=0)[0]
    finally:
        os.unlink(path)
    return jsonify({name: float(p) for name, p in zip(CLASSES, probabilities, strict=True)})


@app.route("/health")
def health() -> object:
    return jsonify({"status": "ok"})
