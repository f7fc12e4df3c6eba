"""What an internet worker costs: bytes and seconds over an emulated WAN link (issue 23).

The benchmark makes two network namespaces joined by a shaped veth pair (``bench/_netns.py``: tbf at
100 Mbit/s and at 20 Mbit/s, 40 ms round trip), puts one ``hec worker`` in the worker namespace and the
client, Redis (queue and blob store) and a coordinator (TLS, file blob store) in the client namespace, and
for each model measures, directly (the worker on Redis over the link) and through the coordinator:

* bytes to and from the worker per sample (the worker end's veth counters, TCP/IP and protocol included);
* evaluation-key bytes (the keys container) and what a fresh worker pulls before its first result;
* time to first result (one chunk, a worker already connected but holding nothing) and samples/s on a batch;
* argmax agreement of the decrypted batch with the clear model.

Models (bench/common.py's breast-cancer split): a TFHE decision tree (depth 4), compiled twice in this run,
with Concrete ML's input-ciphertext and evaluation-key compression off and on (on is Concrete ML 1.9's
default, what he_compute ships); CKKS logistic regression and CKKS ReLU MLP 30-16-2, whose sizes without
SEAL's seeded symmetric ciphertexts and zstd are computed in the same run from the same ciphertexts
(``bench/_wire_sizes.py``).

A third path, "coordinator + gate", runs a second coordinator with ``--gate`` and its ``hec coordinator gate``
(the worker's blobs go through the gate, not the coordinator process).

Run: ``python -m bench link`` (root, iproute2; ``make bench`` installs it). Writes bench/results/link.md.
Narrower runs: ``HEC_BENCH_LINK_RATES=100``, ``HEC_BENCH_LINK_MODELS=logistic`` (a part of the model's name),
``HEC_BENCH_LINK_PATHS=coordinator`` (a part of the path's name), ``HEC_BENCH_LINK_OUT=link-gate`` (the file).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._netns import Link, require_tools  # noqa: E402
from bench.common import mb, table, write  # noqa: E402

PROFILES = (100, 20)  # Mbit/s, each with a 40 ms round trip
RTT_MS = 40
PY = sys.executable
PASSWORD = "bench-link"
ONLY = os.environ.get("HEC_BENCH_LINK_ONLY", "")  # "tfhe" or "ckks": one scheme's models (results: link-SCHEME.md)
# Narrower runs: link speeds ("100"), model names containing ("logistic"), paths containing ("coordinator").
RATES = tuple(int(r) for r in os.environ.get("HEC_BENCH_LINK_RATES", "").split(",") if r) or PROFILES
MODELS = os.environ.get("HEC_BENCH_LINK_MODELS", "")
PATHS = os.environ.get("HEC_BENCH_LINK_PATHS", "")
OUT = os.environ.get("HEC_BENCH_LINK_OUT", "")  # the results file's name (default link or link-SCHEME)


def _models(tmp: Path):
    """(name, scheme, bundle, client, clear predictions, X first, X batch) for each model."""
    import he_compute
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    from bench.bench_ckks_engine import relu_mlp
    from bench.common import standardized_cancer

    X_tr, X_te, y_tr, _ = standardized_cancer()
    out = []
    tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(X_tr, y_tr)
    for compress in ("0", "1") if "ckks" not in ONLY else ():
        # Concrete ML reads these two switches when it compiles (its defaults are "1").
        os.environ["USE_INPUT_COMPRESSION"] = os.environ["USE_KEY_COMPRESSION"] = compress
        bundle = he_compute.compile(tree, X_tr, scheme="tfhe")
        name = f"TFHE tree, compression {'on' if compress == '1' else 'off'}"
        out.append((name, bundle, tree.predict, X_te[:1], X_te[:4]))
    lr = LogisticRegression(max_iter=1000).fit(X_tr, y_tr)
    mlp = relu_mlp(X_tr, y_tr)

    def mlp_predict(X):
        import torch

        with torch.no_grad():
            return mlp(torch.tensor(X, dtype=torch.float32)).numpy().argmax(1)

    for name, model, predict in (("CKKS logistic regression", lr, lr.predict), ("CKKS MLP 30-16-2", mlp, mlp_predict)) \
            if "tfhe" not in ONLY else ():
        bundle = he_compute.compile(model, X_tr, scheme="ckks", packing="batch")
        slots = bundle.manifest["ckks"]["slots"]
        out.append((name, bundle, predict, X_te[:1], np.resize(X_te, (2 * slots, X_te.shape[1]))))
    rows = []
    for i, (name, bundle, predict, first, batch) in enumerate(out):
        client = he_compute.Client.keygen(bundle, tmp / f"keys-{i}", register=False)
        enc_first = client.encrypt(first)
        enc_first.meta["x"] = first  # kept in memory only, to encrypt afresh for each row
        rows.append((name, bundle, client, predict, enc_first, client.encrypt(batch), batch))
    return rows


def _size(c) -> int:
    return sum(len(v) for v in c.sections.values())


class Services:
    """Redis (queue db 0, blobs db 1, coordinator's queue db 2) and a coordinator, in the client namespace."""

    def __init__(self, link: Link, d: Path):
        from bench.bench_coordinator import _port

        self.link, self.d = link, d
        self.redis_port, self.coord_port = _port(), _port()
        self.redis = subprocess.Popen(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--requirepass", PASSWORD,
                                       "--dir", str(d)], stdout=subprocess.DEVNULL)
        self.relays = [link.relay(self.redis_port + 1, self.redis_port)]
        self.local = f"redis://:{PASSWORD}@127.0.0.1:{self.redis_port}"
        self.remote = f"redis://:{PASSWORD}@{link.c_addr}:{self.redis_port + 1}"
        time.sleep(0.5)
        self._coordinator()

    def _coordinator(self) -> None:
        import trustme

        from bench.bench_coordinator import _port

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", self.link.c_addr)
        ca.cert_pem.write_to_path(str(self.d / "ca.pem"))
        cert.private_key_pem.write_to_path(str(self.d / "key.pem"))
        with open(self.d / "cert.pem", "wb") as fh:
            for pem in cert.cert_chain_pems:
                fh.write(pem.bytes())
        self.coord = self._serve("coord", 2)
        self.gate_port = _port()
        self.gated = self._serve("coord-gated", 3, gate=f"https://{self.link.c_addr}:{self.gate_port + 1}")
        self.gate = subprocess.Popen([PY, "-m", "he_compute", "coordinator", "gate", "--listen",
                                      f"127.0.0.1:{self.gate_port}", "--data", str(self.d / "coord-gated"),
                                      "--tls-cert", str(self.d / "cert.pem"), "--tls-key", str(self.d / "key.pem")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.d / "gate.log", "ab"))
        time.sleep(2)
        self.relays.append(self.link.relay(self.gate_port + 1, self.gate_port))
        os.environ["HEC_CHECKPOINTS"] = str(self.d / "checkpoints.json")

    def _serve(self, name: str, db: int, gate: str = "") -> subprocess.Popen:
        """A coordinator (its own data, queue db and file store) relayed onto the link at its port + 1."""
        from bench.bench_coordinator import _port, _wait

        port = _port()
        setattr(self, f"{name.replace('-', '_')}_port", port)
        proc = subprocess.Popen([PY, "-m", "he_compute", "coordinator", "--listen", f"127.0.0.1:{port}",
                                 "--data", str(self.d / name), "--queue", f"{self.local}/{db}", "--blobs",
                                 f"file://{self.d / (name + '-blobs')}", "--tls-cert", str(self.d / "cert.pem"),
                                 "--tls-key", str(self.d / "key.pem"), *(["--gate", gate] if gate else [])],
                                stdout=subprocess.DEVNULL, stderr=open(self.d / f"{name}.log", "ab"))
        _wait(lambda: (self.d / name / "client.token").exists() and (self.d / name / "enroll.token").exists(),
              60, "coordinator")
        time.sleep(2)
        self.relays.append(self.link.relay(port + 1, port))
        return proc

    def paths(self) -> dict:
        """For each path: (client queue, client blobs, worker arguments)."""
        from he_compute.transport.remote import open_tenant

        out = {"direct (Redis)": (f"{self.local}/0", f"{self.local}/1",
                                  ["--queue", f"{self.remote}/0", "--blobs", f"{self.remote}/1"])}
        for how, name in (("coordinator", "coord"), ("coordinator + gate", "coord-gated")):
            port = getattr(self, f"{name.replace('-', '_')}_port")
            q, store = open_tenant(f"https://127.0.0.1:{port}", ca_file=str(self.d / "ca.pem"),
                                   token=(self.d / name / "client.token").read_text().strip())
            out[how] = (q, store, ["--coordinator", f"https://{self.link.c_addr}:{port + 1}",
                                   "--token-file", str(self.d / name / "enroll.token"), "--ca-file",
                                   str(self.d / "ca.pem")])
        return {k: v for k, v in out.items() if not PATHS or any(p in k for p in PATHS.split(","))}

    def close(self) -> None:
        for p in (*self.relays, self.gate, self.gated, self.coord, self.redis):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _one(link: Link, svc: Services, how: str, args: list[str], queue, blobs, model, n: int) -> dict:
    """A fresh worker over the link: the first result, then the batch."""
    from he_compute import read_evaluation_keys
    from he_compute.client.run import RunOptions, run

    name, bundle, client, predict, first, batch, X = model
    # Fresh ciphertexts for every row: CKKS evaluation is deterministic, so a result of the same ciphertexts
    # would already be in the store, and a worker does not upload a blob the store holds.
    first, batch = client.encrypt(first.meta["x"]), client.encrypt(X)
    evk = read_evaluation_keys(client.evaluation_keys_path)
    state = svc.d / f"worker-{n}"
    worker = subprocess.Popen(link.in_ns("w", [PY, "-m", "he_compute", "worker", "--concurrency", "1", "--threads",
                                               "1", "--device", "cpu", "--state", str(state), *args]),
                              env={**os.environ, "OMP_NUM_THREADS": "1", "HEC_PROGRESS": "off"},
                              stdout=subprocess.DEVNULL, stderr=open(svc.d / f"worker-{n}.log", "ab"), cwd=ROOT)
    try:
        time.sleep(8)  # the worker imports and connects; what it then pulls is measured
        c0, t0 = link.counters(), time.perf_counter()
        run(first, bundle.server_part(), evk, queue=queue, blobs=blobs,
            options=RunOptions(timeout=900, resume=False, show_progress=False))
        ttfr, c1 = time.perf_counter() - t0, link.counters()
        t1 = time.perf_counter()
        report = run(batch, bundle.server_part(), evk, queue=queue, blobs=blobs,
                     options=RunOptions(timeout=900, resume=False, show_progress=False))
        seconds, c2 = time.perf_counter() - t1, link.counters()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    out = client.decrypt(report.result)
    agree = float(np.mean(np.asarray(out).reshape(len(X), -1).argmax(1) == predict(X))) if out.shape[-1] > 1 else \
        float(np.mean((out.reshape(-1) > 0.5) == predict(X)))
    samples = len(X)
    return {"model": name, "path": how, "ttfr": ttfr, "rate": samples / seconds, "first_down": c1[0] - c0[0],
            "down": (c2[0] - c1[0]) / samples, "up": (c2[1] - c1[1]) / samples, "agree": agree,
            "evk": _size(evk), "input_payload": _size(batch) / samples}


def inner(link: Link) -> None:
    """Everything that runs in the client namespace."""
    from bench._wire_sizes import ckks_sizes

    d = Path(tempfile.mkdtemp(prefix="hec-bench-link-"))
    rows, n, svc = [], 0, None
    try:
        models = _models(d)
        sizes = [ckks_sizes(m[1], m[5], m[2]) for m in models if m[1].scheme == "ckks"]
        svc = Services(link, d)
        for rate in RATES:
            link.shape(rate)
            for how, (queue, blobs, args) in svc.paths().items():
                for model in [m for m in models if not MODELS or MODELS in m[0]]:
                    n += 1
                    r = _one(link, svc, how, args, queue, blobs, model, n)
                    rows.append({**r, "profile": rate})
                    print(r, flush=True)
    finally:
        if svc is not None:
            svc.close()
        shutil.rmtree(d, ignore_errors=True)  # the coordinator's blob store holds every key and ciphertext
    _report(rows, sizes, os.getloadavg())


def _report(rows, sizes, load) -> None:
    head = ["model", "path", "link", "to worker / sample", "from worker / sample", "input payload / sample",
            "eval keys", "pulled before 1st result", "time to 1st result", "samples/s", "agreement"]
    body = [[r["model"], r["path"], f"{r['profile']} Mbit/s", mb(int(r["down"])), mb(int(r["up"])),
             mb(int(r["input_payload"])), mb(r["evk"]), mb(r["first_down"]), f"{r['ttfr']:.1f} s",
             f"{r['rate']:.3g}" if r["rate"] < 10 else f"{r['rate']:,.0f}", f"{r['agree']:.1%}"] for r in rows]
    text = [f"# Over a link (python -m bench link): {', '.join(f'{p} Mbit/s' for p in RATES)}, {RTT_MS} ms RTT",
            "", f"Load average at the end: {load[0]:.2f}. One `hec worker` (1 core) in its own network namespace per "
            "row, started fresh; the client, Redis and the coordinator (TLS) in the other. Bytes are the worker "
            "end's veth counters (headers and protocol included).", "", table(head, body), ""]
    if any(r["model"].startswith("TFHE") for r in rows):
        text += ["## TFHE: Concrete ML's compression on / off (both compiled and measured in this run)", ""]
    for r_on in rows:
        if r_on["model"] != "TFHE tree, compression on":
            continue
        off = next((r for r in rows if r["model"] == "TFHE tree, compression off" and r["path"] == r_on["path"]
                    and r["profile"] == r_on["profile"]), None)
        if off is None:
            continue
        text.append(f"- {r_on['path']}, {r_on['profile']} Mbit/s: evaluation keys {r_on['evk'] / off['evk']:.1%} "
                    f"of off; bytes to the worker per sample {r_on['down'] / off['down']:.1%}; from it "
                    f"{r_on['up'] / off['up']:.0%}; pulled before the first result {r_on['first_down'] / off['first_down']:.1%}; "
                    f"time to first result {r_on['ttfr']:.0f} s vs {off['ttfr']:.0f} s")
    if sizes:
        text += ["", "## CKKS: what SEAL's seeded symmetric ciphertexts and zstd save (same ciphertexts, this run)", ""]
        text += sizes
    write(OUT or (f"link-{ONLY}" if ONLY else "link"), "\n".join(text))


def main() -> None:
    require_tools()
    if sys.argv[1:2] == ["inner"]:
        link = Link(float(sys.argv[2]), float(sys.argv[3]), create=False, pid=int(sys.argv[4]))
        inner(link)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with Link(PROFILES[0], RTT_MS) as link:
        cmd = link.in_ns("c", [PY, "-m", "bench.bench_link", "inner", str(PROFILES[0]), str(RTT_MS), str(os.getpid())])
        rc = subprocess.run(cmd, cwd=ROOT).returncode
    sys.exit(rc)


if __name__ == "__main__":
    main()
