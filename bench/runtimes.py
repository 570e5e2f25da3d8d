"""Model-only latency, RSS and parity of the candidate serving runtimes, each in its own process.

    taskset -c 0 .venv/bin/python -m bench.runtimes --mid   # mobilenet_v2 (LiteRT) vs mobilenet_v2_mid (ONNX Runtime)
    taskset -c 0 .venv/bin/python -m bench.runtimes      # every runtime; needs requirements-tf.txt, plus
    .venv/bin/pip install onnxruntime==1.31.1 tf2onnx==1.17.0   # for the ONNX Runtime row

Each runtime is used directly (no service code imported), in a fresh process: the 8 fixed
tensors of tests/data/reference (numpy default_rng(0); max |diff| against nsfwjs), then
60 single-image predictions (median and p90 ms); RSS is the process's peak. This is what chose
LiteRT for the default path (nsfw/model/litert.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import REPO
from nsfw.model.onnx import expand_lean

REFERENCE = REPO / "tests" / "data" / "reference"

_CHILD = r"""
import json, resource, sys, time
import numpy as np
which, model_path, ref_file = sys.argv[1], sys.argv[2], sys.argv[3]
x = np.random.default_rng(0).random((8, 224, 224, 3)).astype(np.float32)  # scripts/nsfwjs_reference.py
expected = np.array(json.load(open(ref_file))["outputs_batch1"])
t0 = time.perf_counter()
if which == "onnxruntime":
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    run = lambda b: session.run(None, {name: b})[0]  # every output, as infer() runs it
elif which == "litert":
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=model_path, num_threads=1); it.allocate_tensors()
    i_in = it.get_input_details()[0]["index"]
    i_out, i_feat = (d["index"] for d in sorted(it.get_output_details(), key=lambda d: d["shape"][-1]))  # 5, 128
    def run(b):
        it.set_tensor(i_in, b); it.invoke(); it.get_tensor(i_feat); return it.get_tensor(i_out).copy()
else:
    import keras, tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1); tf.config.threading.set_inter_op_parallelism_threads(1)
    m = keras.models.load_model(model_path, compile=False)
    f = tf.function(lambda b: m(b, training=False))
    run = lambda b: f(b).numpy()
load_s = time.perf_counter() - t0
diff = float(np.abs(np.concatenate([run(x[i:i + 1]) for i in range(8)]) - expected).max())
times = []
for i in range(60):
    t = time.perf_counter(); run(x[i % 8:i % 8 + 1]); times.append(time.perf_counter() - t)
print(json.dumps({"runtime": which, "load_s": round(load_s, 3), "median_ms": round(float(np.median(times)) * 1e3, 2),
                  "p90_ms": round(float(np.percentile(times, 90)) * 1e3, 2), "max_abs_diff": diff,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def _export_onnx(path: Path) -> bool:
    code = (
        "import sys, keras, tensorflow as tf, tf2onnx\n"
        "m = keras.models.load_model(sys.argv[1], compile=False)\n"
        "spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name='input'),)\n"
        "f = tf.function(lambda x: m(x, training=False), input_signature=spec)\n"
        "tf2onnx.convert.from_function(f, input_signature=spec, opset=17, output_path=sys.argv[2])\n"
    )
    keras_file = REPO / "models" / "mobilenet_v2" / "model.keras"
    done = subprocess.run([sys.executable, "-c", code, str(keras_file), str(path)], capture_output=True)
    return done.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mid", action="store_true", help="only mobilenet_v2 (LiteRT) against mobilenet_v2_mid")
    args = parser.parse_args(argv)
    rows = []
    synthetic = str(REFERENCE / "nsfwjs_synthetic_224.json")
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        models = REPO / "models" / "mobilenet_v2"
        candidates = [("litert", "litert", str(models / "model.tflite"), synthetic)]
        if not args.mid:
            candidates.append(("tensorflow", "tensorflow", str(models / "model.keras"), synthetic))
            if _export_onnx(onnx):
                candidates.append(("onnxruntime", "onnxruntime", str(onnx), synthetic))
            else:
                print("onnxruntime row skipped: tf2onnx/onnxruntime not installed", file=sys.stderr)
        # mobilenet_v2_mid, its lean artifact expanded as nsfw/model/onnx.py does, against its own nsfwjs scores.
        mid = Path(tmp) / "mid.onnx"
        mid.write_bytes(expand_lean(REPO / "models" / "mobilenet_v2_mid" / "model.npz"))
        mid_reference = str(REFERENCE / "nsfwjs_mobilenet_v2_mid_synthetic_224.json")
        candidates.append(("mid onnxrt", "onnxruntime", str(mid), mid_reference))
        for label, which, model, reference in candidates:
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, which, model, reference],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "runtime": label})
    print(f"{'runtime':<12} {'load s':>7} {'median ms':>10} {'p90 ms':>8} {'peak RSS MB':>12} {'max |diff|':>11}")
    for r in rows:
        print(
            f"{r['runtime']:<12} {r['load_s']:>7} {r['median_ms']:>10} {r['p90_ms']:>8} "
            f"{r['peak_rss_mb']:>12} {r['max_abs_diff']:>11.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
