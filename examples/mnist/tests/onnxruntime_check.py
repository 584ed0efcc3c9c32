"""Runs an exported ONNX model in onnxruntime and compares it with burn-quant's logits.

Usage: onnxruntime_check.py MODEL INPUTS SHAPE LOGITS STEPS
  INPUTS  float32 little-endian, row-major, of SHAPE (comma-separated, e.g. 10000,1,28,28)
  LOGITS  burn-quant's logits for INPUTS, float32 [batch, classes]
  STEPS   the value of one output integer step: one float32, or one per class

Checks the model with onnx.checker (full check), runs it on the CPU execution provider and
prints one line: `max_steps within_one_step same_class same_decided input_name` where max_steps
is the largest |onnxruntime - burn-quant| in output steps, within_one_step the fraction of
logits within one step, same_class the fraction of rows with the same arg-max, same_decided
that fraction among the rows whose burn-quant top logit leads the second by more than one
step (elsewhere a one-step difference may swap the two).
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main() -> None:
    model_path, inputs_path, shape, logits_path, steps_path = sys.argv[1:6]
    shape = [int(d) for d in shape.split(",")]
    onnx.checker.check_model(onnx.load(model_path), full_check=True)
    x = np.fromfile(inputs_path, dtype="<f4").reshape(shape)
    expected = np.fromfile(logits_path, dtype="<f4").reshape(shape[0], -1)
    steps = np.fromfile(steps_path, dtype="<f4")
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = np.concatenate(
        [session.run(None, {name: x[i : i + 1000]})[0] for i in range(0, len(x), 1000)]
    )
    assert got.shape == expected.shape, (got.shape, expected.shape)
    diff = np.abs(got - expected) / steps
    # A rounding difference of the last float bits is not a step.
    within = diff <= 1.0 + 1e-3
    same = got.argmax(axis=1) == expected.argmax(axis=1)
    top = np.sort(expected, axis=1)
    decided = (top[:, -1] - top[:, -2]) > steps.max() * (1.0 + 1e-3)
    same_decided = same[decided].mean() if decided.any() else 1.0
    print(f"{diff.max():.6f} {within.mean():.6f} {same.mean():.6f} {same_decided:.6f} {name}")


if __name__ == "__main__":
    main()
