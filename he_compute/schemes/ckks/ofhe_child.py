"""The OpenFHE process: CKKS with bootstrapping, run by the OpenFHE environment's CPython 3.10.

OpenFHE's only wheel on the registry imports on CPython 3.10 alone, so the client and the worker each start
this file as a child of that interpreter (``python -I ofhe_child.py FD_IN FD_OUT MAX_BYTES``) and talk to it
over two pipes in length-prefixed frames (:mod:`.ofhe`).  It imports only the standard library, numpy and
openfhe, and keeps to Python 3.10 syntax.  Nothing here unpickles: arrays travel as raw float64 bytes whose
length the header states, OpenFHE objects as its own binary serialization.

Frame: ``u32 header length | JSON header | u64 payload length | payload``.  A header's ``sizes`` cuts the
payload into blobs.  Every length is checked against the bound given on the command line before reading.
Keys do not travel in frames: at 128-bit they run to gigabytes, so key generation writes them with OpenFHE's
own file serializers straight into a directory the parent names, and a worker's process reads them from
files the parent wrote (and sized and hashed) there; only paths cross the pipes.
"""

import json
import math
import os
import struct
import sys

_HEAD = struct.Struct(">I")
_BODY = struct.Struct(">Q")
MAX_HEADER = 1 << 20
MAX_BLOBS = 1 << 16
# The HE Standard's largest total modulus (log2 QP) at 128-bit classical security, ternary secret (the
# table OpenFHE enforces when asked for HEStd_128_classic).
MAX_LOGQP_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881, 65536: 1772, 131072: 3576}
WORKER_FILES = ("context", "relin", "rotation")


def _log_p(log_q, towers, dnum, aux_bits):
    """Bits of P as OpenFHE's hybrid key switching sizes it: ``aux_bits``-bit primes covering the widest of the
    ``dnum`` digits of ``ceil(towers / dnum)`` Q primes (the first digit, with the wider first prime)."""
    digits = min(max(dnum, 1), towers)
    per = math.ceil(towers / digits)
    widest = math.ceil(log_q * per / towers) + 10  # the first prime is up to 10 bits wider than the others
    return math.ceil(widest / aux_bits) * aux_bits


class Refused(Exception):
    """A request this process refuses (its message goes back to the parent as one line)."""


class Closed(Exception):
    """The parent closed its pipe: this process ends."""


def _read_exact(fd, n):
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise Closed
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_frame(fd, max_bytes):
    (hlen,) = _HEAD.unpack(_read_exact(fd, _HEAD.size))
    if hlen > MAX_HEADER:
        raise Refused(f"header of {hlen} bytes (limit {MAX_HEADER})")
    header = json.loads(_read_exact(fd, hlen))
    (plen,) = _BODY.unpack(_read_exact(fd, _BODY.size))
    if plen > max_bytes:
        raise Refused(f"payload of {plen} bytes (limit {max_bytes})")
    payload = _read_exact(fd, plen) if plen else b""
    sizes = header.get("sizes", [])
    if not isinstance(sizes, list) or len(sizes) > MAX_BLOBS or not all(isinstance(s, int) and s >= 0 for s in sizes) \
            or sum(sizes) != len(payload):
        raise Refused("blob sizes do not add up to the payload")
    blobs, pos = [], 0
    for s in sizes:
        blobs.append(payload[pos:pos + s])
        pos += s
    return header, blobs


def write_frame(fd, header, blobs=()):
    blobs = list(blobs)
    head = json.dumps(dict(header, sizes=[len(b) for b in blobs]), separators=(",", ":")).encode()
    data = _HEAD.pack(len(head)) + head + _BODY.pack(sum(len(b) for b in blobs))
    for part in [data, *blobs]:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]


class Engine:
    """One crypto context and the keys this side holds (the secret key on a client, public keys on a worker)."""

    def __init__(self):
        import openfhe

        self.o = openfhe
        self.cc = self.secret = self.params = None
        self.steps, self.bootstraps, self.kept = [], 0, None

    # ---- parameters ------------------------------------------------------------------------------------
    def _gen(self, p):
        o = self.o
        cp = o.CCParamsCKKSRNS()
        secure = p["security"] == 128
        cp.SetSecurityLevel(o.HEStd_128_classic if secure else o.HEStd_NotSet)
        if not secure:
            cp.SetRingDim(int(p["ring_dim"]))
        cp.SetSecretKeyDist(o.SPARSE_TERNARY if p.get("secret") == "sparse" else o.UNIFORM_TERNARY)
        cp.SetScalingModSize(int(p["scale_bits"]))
        cp.SetFirstModSize(int(p["first_mod_bits"]))
        cp.SetScalingTechnique(o.FLEXIBLEAUTO)
        cp.SetKeySwitchTechnique(o.HYBRID)
        cp.SetNumLargeDigits(int(p.get("dnum", 3)))
        budget = [int(v) for v in p["level_budget"]]
        dist = o.SPARSE_TERNARY if p.get("secret") == "sparse" else o.UNIFORM_TERNARY
        cp.SetMultiplicativeDepth(int(p["levels"]) + o.CryptoContext.GetBootstrapDepth(budget, dist))
        cp.SetBatchSize(int(p["slots"]))
        cc = o.GenCryptoContext(cp)
        for feature in (o.PKE, o.KEYSWITCH, o.LEVELEDSHE, o.ADVANCEDSHE, o.FHE):
            cc.Enable(feature)
        return cc

    def _describe(self, cc):
        """Ring, log2 Q and log2 QP (Q with the special primes P of hybrid key switching: what the HE
        Standard's tables bound), and the fields that fix P (digits ``dnum``, special-prime bits ``ab``)."""
        n = cc.GetRingDimension()
        logq = int(cc.GetElementParams().GetModulus()).bit_length()
        # OpenFHE rebuilds P from these serialized fields on deserialization; its Python API does not show P.
        fields = json.loads(self.o.Serialize(cc, self.o.JSON))["value0"]["ptr_wrapper"]["data"]["cc"]["ptr_wrapper"][
            "data"]["value0"]
        dnum, ab, depth = int(fields["dnum"]), int(fields["ab"]), cc.GetMultiplicativeDepth()
        return {"ring_dim": n, "log_q": logq, "log_qp": logq + _log_p(logq, depth + 1, dnum, ab), "depth": depth,
                "dnum": dnum, "aux_bits": ab}

    def _setup(self, cc, p):
        self.cc, self.params = cc, p
        self.boot_depth = self.o.CryptoContext.GetBootstrapDepth(
            [int(v) for v in p["level_budget"]], self.o.SPARSE_TERNARY if p.get("secret") == "sparse" else self.o.UNIFORM_TERNARY)
        self.depth = cc.GetMultiplicativeDepth()
        self.slots = int(p["slots"])

    def keygen(self, h, _blobs):
        """A key set: context and secret key in the reply (never in a file outside the key directory); the
        worker's ``relin`` and ``rotation`` keys (GBs at 128-bit) written by OpenFHE into ``h["dir"]``."""
        p, out = h["params"], h.get("dir")
        if not isinstance(out, str) or not os.path.isdir(out):
            raise Refused("key generation needs an existing directory to write the keys into")
        cc = self._gen(p)
        self._setup(cc, p)
        o = self.o
        cc.EvalBootstrapSetup([int(v) for v in p["level_budget"]], [0, 0], self.slots)
        kp = cc.KeyGen()
        self.secret = kp.secretKey
        cc.EvalMultKeyGen(kp.secretKey)
        rotations = [int(r) for r in h.get("rotations", [])]
        if rotations:
            cc.EvalRotateKeyGen(kp.secretKey, rotations)
        cc.EvalBootstrapKeyGen(kp.secretKey, self.slots)
        paths = {name: os.path.join(out, name) for name in WORKER_FILES[1:]}
        written = [cc.SerializeEvalMultKey(paths["relin"], o.BINARY, ""),
                   cc.SerializeEvalAutomorphismKey(paths["rotation"], o.BINARY, "")]
        if not all(written):
            raise Refused(f"OpenFHE could not write the evaluation keys into {out}")
        # The client never evaluates: its process keeps the secret key and the context, not gigabytes of keys.
        cc.ClearEvalAutomorphismKeys()
        o.ClearEvalMultKeys()
        return (dict(self._describe(cc), ok=True, key_bytes={k: os.path.getsize(v) for k, v in paths.items()}),
                [o.Serialize(cc, o.BINARY), o.Serialize(kp.secretKey, o.BINARY)])

    def _context(self, source, what, *, from_file=False):
        o = self.o
        try:
            cc, ok = o.DeserializeCryptoContext(source, o.BINARY) if from_file else \
                (o.DeserializeCryptoContextString(source, o.BINARY), True)
        except Exception as exc:  # noqa: BLE001 - OpenFHE raises its own error types
            raise Refused(f"{what} is not an OpenFHE crypto context: {str(exc)[:200]}") from None
        if not ok:
            raise Refused(f"{what} is not an OpenFHE crypto context")
        return cc

    def open_client(self, h, blobs):
        o = self.o
        if len(blobs) != 2:
            raise Refused("the client's keys must be a context and a secret key")
        cc = self._context(blobs[0], "the client's crypto context")
        self._setup(cc, h["params"])
        try:
            self.secret = o.DeserializePrivateKeyString(blobs[1], o.BINARY)
        except Exception as exc:  # noqa: BLE001
            raise Refused(f"the secret key is not readable: {str(exc)[:200]}") from None
        return {"ok": True}, []

    def open_worker(self, h, _blobs):
        """The client's context and public keys, from files the parent wrote; below 128-bit only if allowed."""
        o, p = self.o, h["params"]
        paths = _files(h, WORKER_FILES)
        cc = self._context(paths[0], "the evaluation keys' crypto context", from_file=True)
        got = self._describe(cc)
        if p["security"] == 128:
            # Checked twice: OpenFHE refuses to make a HEStd_128_classic context from insecure parameters,
            # and the client's context must be the one made here, special primes included: the tables bound
            # log2 QP, and a context with fewer digits (a larger P) has the same ring and log2 Q.
            mine = self._describe(self._gen(p))
            same = ("ring_dim", "log_q", "log_qp", "dnum", "aux_bits", "depth")
            if any(mine[k] != got[k] for k in same):
                raise Refused(f"the keys' context (N={got['ring_dim']}, log2 Q={got['log_q']}, log2 QP={got['log_qp']}) "
                              f"is not the 128-bit context of these parameters (N={mine['ring_dim']}, log2 "
                              f"Q={mine['log_q']}, log2 QP={mine['log_qp']})")
            if got["log_qp"] > MAX_LOGQP_128.get(got["ring_dim"], 0):
                raise Refused(f"log2 QP={got['log_qp']} at N={got['ring_dim']} is below 128-bit security")
        elif not h.get("insecure_ok"):
            raise Refused("these are test parameters without 128-bit security")
        if got["ring_dim"] != int(p.get("ring_dim", got["ring_dim"])) and p["security"] != 128:
            raise Refused(f"the keys' ring N={got['ring_dim']} differs from the bundle's N={p['ring_dim']}")
        self._setup(cc, p)
        try:
            mult = cc.DeserializeEvalMultKey(paths[1], o.BINARY)
            auto = cc.DeserializeEvalAutomorphismKey(paths[2], o.BINARY)
        except Exception as exc:  # noqa: BLE001
            raise Refused(f"the evaluation keys are not readable: {str(exc)[:200]}") from None
        if not mult or not auto:
            raise Refused("the evaluation keys are not readable OpenFHE keys")
        cc.EvalBootstrapSetup([int(v) for v in p["level_budget"]], [0, 0], self.slots)
        return dict(got, ok=True), []

    # ---- client side -------------------------------------------------------------------------------------
    def encrypt(self, h, blobs):
        import numpy as np

        if self.secret is None:
            raise Refused("no secret key loaded")
        out = []
        for blob in blobs:
            vec = np.frombuffer(blob, dtype=np.float64)
            if vec.size != self.slots:
                raise Refused(f"a vector of {vec.size} values for {self.slots} slots")
            # Fresh ciphertexts start at the level a bootstrap leaves: no level above it would ever be used.
            pt = self.cc.MakeCKKSPackedPlaintext(vec.tolist(), 1, self.boot_depth)
            out.append(self.o.Serialize(self.cc.Encrypt(self.secret, pt), self.o.BINARY))
        return {"ok": True}, out

    def decrypt(self, h, blobs):
        import numpy as np

        out = []
        for blob in blobs:
            ct = self._ciphertext(blob)
            pt = self.cc.Decrypt(self.secret, ct)
            pt.SetLength(self.slots)
            out.append(np.asarray(pt.GetRealPackedValue(), dtype=np.float64).tobytes())
        return {"ok": True}, out

    def _ciphertext(self, blob):
        o = self.o
        try:
            ct = o.DeserializeCiphertextString(blob, o.BINARY)
        except Exception as exc:  # noqa: BLE001
            raise Refused(f"not an OpenFHE ciphertext: {str(exc)[:200]}") from None
        if ct.GetLevel() > self.depth or ct.GetSlots() != self.slots:
            raise Refused("a ciphertext of other parameters")
        return ct

    # ---- worker side -------------------------------------------------------------------------------------
    def plan(self, h, blobs):
        """Steps: ``["linear", n, n1, [[g, j, blob], ...], bias_blob]``, ``["poly", [blob...], dom]``, ``["square"]``."""
        import numpy as np

        vecs = [np.frombuffer(b, dtype=np.float64) for b in blobs]
        if any(v.size != self.slots for v in vecs):
            raise Refused("plan vectors do not match the slot count")
        self.steps = [(s, vecs) for s in h["steps"]]
        return {"ok": True}, []

    def _levels(self, ct):
        return self.depth - ct.GetLevel() - (ct.GetNoiseScaleDeg() - 1)

    def _need(self, step):
        if step[0] == "poly":  # as boot.op_needs counts it
            d, dom = len(step[1]) - 1, 1 if step[2] is not None else 0
            return (max(1, math.ceil(math.log2(d))) + 1 if d > 1 else 1) + dom
        return 0 if step[0] == "bootstrap" else 1  # keep: one level left for the product x q

    def _boot(self, ct, need):
        # One level stays unused: bootstrapping rescales its input first (FLEXIBLEAUTO), which needs it.
        if self._levels(ct) - 1 < need:
            ct = self.cc.EvalBootstrap(ct)
            self.bootstraps += 1
        return ct

    def evaluate(self, h, blobs):
        o = self.o
        self.bootstraps = 0
        outs = []
        for blob in blobs:
            ct = self._ciphertext(blob)
            for step, vecs in self.steps:
                ct = self._boot(ct, self._need(step))
                ct = _DISPATCH[step[0]](self, ct, step, vecs)
            outs.append(o.Serialize(ct, o.BINARY))
        return {"ok": True, "bootstraps": self.bootstraps}, outs

    def _pt(self, vec):
        return self.cc.MakeCKKSPackedPlaintext(vec.tolist())

    def _linear(self, ct, step, vecs):
        _, n, n1, diags, bias = step
        cc = self.cc
        babies = {}
        for _g, j, _i in diags:
            if j not in babies:
                babies[j] = ct if j == 0 else cc.EvalRotate(ct, j)
        acc = None
        for g in sorted({d[0] for d in diags}):
            inner = None
            for gg, j, i in diags:
                if gg == g:
                    term = cc.EvalMult(babies[j], self._pt(vecs[i]))
                    inner = term if inner is None else cc.EvalAdd(inner, term)
            if g:
                inner = cc.EvalRotate(inner, g * n1)
            acc = inner if acc is None else cc.EvalAdd(acc, inner)
        acc = cc.EvalAdd(acc, cc.EvalRotate(acc, -n))
        return cc.EvalAdd(acc, self._pt(vecs[bias]))

    def _keep(self, ct, step, vecs):  # a composite ReLU's input x, for its final product x q
        self.kept = ct
        return ct

    def _times_kept(self, ct, step, vecs):
        return self.cc.EvalMult(self.kept, ct)

    def _bootstrap(self, ct, step, vecs):
        """A bootstrap where the plan asks for one (the greedy placement adds its own in ``evaluate``)."""
        self.bootstraps += 1
        return self.cc.EvalBootstrap(ct)

    def _square(self, ct, step, vecs):
        return self.cc.EvalSquare(ct)

    def _poly(self, ct, step, vecs):
        """``sum_k c_k T_k(u)`` with per-slot coefficient vectors: the Chebyshev basis by products, then one
        plaintext product per term (coefficients differ per neuron, so a scalar series would not do)."""
        cc = self.cc
        coeffs, dom = step[1], step[2]
        if dom is not None:
            ct = cc.EvalAdd(cc.EvalMult(ct, self._pt(vecs[dom[0]])), self._pt(vecs[dom[1]]))
        d = len(coeffs) - 1
        t = {1: ct}

        def cheb(k):
            if k not in t:
                a = 1 << (k.bit_length() - 1)
                if a == k:
                    half = cheb(k // 2)
                    t[k] = cc.EvalSub(cc.EvalAdd(cc.EvalSquare(half), cc.EvalSquare(half)), 1.0)
                else:
                    # T_(a+b) = 2 T_a T_b - T_(a-b)
                    b = k - a
                    prod = cc.EvalMult(cheb(a), cheb(b))
                    t[k] = cc.EvalSub(cc.EvalAdd(prod, prod), cheb(a - b))
            return t[k]

        acc = None
        for k in range(1, d + 1):
            c = vecs[coeffs[k]]
            if not c.any():
                continue
            term = cc.EvalMult(cheb(k), self._pt(c))
            acc = term if acc is None else cc.EvalAdd(acc, term)
        if acc is None:  # a constant: carry the input at 2**-20 so that the result stays a ciphertext
            acc = cc.EvalMult(ct, 2.0 ** -20)
        return cc.EvalAdd(acc, self._pt(vecs[coeffs[0]]))


# One table maps each plan op to its kernel: a new op (a composite sign polynomial) is one more entry.
_DISPATCH = {"linear": Engine._linear, "square": Engine._square, "poly": Engine._poly, "bootstrap": Engine._bootstrap,
             "keep": Engine._keep, "times_kept": Engine._times_kept}
_OPS = {"keygen": Engine.keygen, "open_client": Engine.open_client, "open_worker": Engine.open_worker,
        "encrypt": Engine.encrypt, "decrypt": Engine.decrypt, "plan": Engine.plan, "eval": Engine.evaluate}


def _files(h, names):
    """The paths the parent named for ``names``: regular files (their sizes the parent bounded)."""
    paths = h.get("paths")
    if not isinstance(paths, list) or len(paths) != len(names) or not all(isinstance(x, str) and os.path.isfile(x)
                                                                           for x in paths):
        raise Refused(f"the keys must be {len(names)} files the parent wrote: {', '.join(names)}")
    return paths


def main(argv):
    fd_in, fd_out, max_bytes = int(argv[0]), int(argv[1]), int(argv[2])
    os.umask(0o077)  # key files this process writes are its user's alone (the secret key among them)
    engine = Engine()
    write_frame(fd_out, {"hello": True, "pid": os.getpid()})
    while True:
        try:
            header, blobs = read_frame(fd_in, max_bytes)
        except Closed:
            return 0
        except Refused as exc:
            write_frame(fd_out, {"error": str(exc)[:500]})
            return 1
        op = header.get("op")
        if op == "quit":
            return 0
        try:
            if op not in _OPS:
                raise Refused(f"unknown op {str(op)[:20]!r}")
            reply, out = _OPS[op](engine, header, blobs)
        except Refused as exc:
            reply, out = {"error": str(exc)[:500]}, []
        except Exception as exc:  # noqa: BLE001 - OpenFHE's exceptions go back as one line
            reply, out = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}, []
        write_frame(fd_out, reply, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
