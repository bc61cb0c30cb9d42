"""Real components for the harness tests: small TFLite models built with TensorFlow, and a
private OpenSSH server on a loopback port with temporary host and user keys."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SSHD = "/usr/sbin/sshd"


# ---------------------------------------------------------------- models
def digits_data(n_test: int = 200):
    """sklearn's real digits (8x8), scaled to [0, 1]: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def build_digits_models(out: Path) -> dict[str, Path]:
    """Train a tiny CNN on digits for a few epochs; write float32, full-int8 .tflite, eval.npz."""
    import tensorflow as tf
    import tf_keras as k

    tf.random.set_seed(0)
    x_train, y_train, x_test, y_test = digits_data()
    model = k.Sequential(
        [
            k.layers.InputLayer(input_shape=(8, 8, 1)),
            k.layers.Conv2D(8, 3, padding="same", activation="relu"),
            k.layers.MaxPooling2D(),
            k.layers.Conv2D(16, 3, padding="same", activation="relu"),
            k.layers.Flatten(),
            k.layers.Dense(10),
        ]
    )
    model.compile(optimizer="adam", loss=k.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "float": out / "digits_float.tflite",
        "int8": out / "digits_int8.tflite",
        "data": out / "eval.npz",
    }
    paths["float"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    paths["int8"].write_bytes(convert_int8(tf, model, x_train[:200]))
    np.savez(paths["data"], x=x_test, y=y_test)
    return paths


def convert_int8(tf, model, calib: np.ndarray) -> bytes:
    """Full-integer conversion (int8 in, int8 out) with TF's converter directly."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def write_malformed(out: Path, good_model: Path) -> dict[str, Path]:
    """A file that is not a model at all, and a real model cut in half (passes the header check)."""
    out.mkdir(parents=True, exist_ok=True)
    garbage, truncated = out / "garbage.tflite", out / "truncated.tflite"
    garbage.write_bytes(b"this is not a flatbuffer" * 10)
    raw = good_model.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    return {"garbage": garbage, "truncated": truncated}


# ---------------------------------------------------------------- sshd
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass
class Sshd:
    """A private sshd on 127.0.0.1:port that trusts one temporary user key."""

    port: int
    user: str
    user_key: Path
    host_key: Path
    known_hosts: Path
    process: subprocess.Popen

    def url(self, workdir: str = "", **query: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"ssh://{self.user}@127.0.0.1:{self.port}{workdir}" + (f"?{q}" if q else "")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_sshd(workdir: Path) -> Sshd:
    """Start ``/usr/sbin/sshd`` in the foreground on a free loopback port; wait until it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    host_key, user_key = keygen(workdir / "host_key"), keygen(workdir / "user_key")
    authorized = workdir / "authorized_keys"
    shutil.copy(user_key.with_suffix(".pub"), authorized)
    port = free_port()
    known_hosts = workdir / "known_hosts"
    host_pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    argv = [
        SSHD,
        "-D",
        "-e",
        "-f",
        "/dev/null",
        "-o",
        f"Port={port}",
        "-o",
        "ListenAddress=127.0.0.1",
        "-o",
        f"HostKey={host_key}",
        "-o",
        f"AuthorizedKeysFile={authorized}",
        "-o",
        "StrictModes=no",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "KbdInteractiveAuthentication=no",
        "-o",
        "PermitRootLogin=prohibit-password",
        "-o",
        "Subsystem=sftp internal-sftp",
        "-o",
        f"PidFile={workdir / 'sshd.pid'}",
    ]
    log = open(workdir / "sshd.log", "wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    _wait_listening(port, process, workdir / "sshd.log")
    return Sshd(port, getpass.getuser(), user_key, host_key, known_hosts, process)


def _wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"sshd did not listen on {port}: {log.read_text()}")
