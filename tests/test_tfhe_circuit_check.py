"""The TFHE circuit is checked by structure: Concrete's own parser, then an allow-list walk.

Every attack here is a real server part: a circuit compiled by Concrete ML with the
attack injected into its ``circuit.mlir``, spelled so that the regular expressions
this project used before let it through, and parsed without complaint by the MLIR
parser that Concrete's compiler uses.  The positive controls show that every real
model's circuit passes, that the declaration attack really aborts Concrete's
compiler, and that the parser really crashes on some inputs (hence the child process).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import OrderedDict

import pytest

import he_compute
from he_compute.formats.bundle import Bundle
from he_compute.schemes.tfhe import mlir_check
from he_compute.schemes.tfhe.artifacts import check_server_sections

_PARSE_ONLY = """
import sys
import mlir.ir as ir
from mlir._mlir_libs._concretelang import register_dialects
with ir.Context() as context:
    register_dialects(context)
    for path in sys.argv[1:]:
        module = ir.Module.parse(open(path).read())
        print(path, len(list(module.body.operations)))
"""


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """Every check in this module runs the real child: no digest remembered from compilation."""
    monkeypatch.setattr(mlir_check, "_passed", OrderedDict())


@pytest.fixture(scope="module")
def bundles(cancer, tiny_mlp):
    """Bundles of real, small Concrete ML models, compiled once for this module."""
    from concrete.ml.sklearn import (
        DecisionTreeClassifier,
        KNeighborsClassifier,
        LogisticRegression,
        RandomForestClassifier,
        Ridge,
        XGBClassifier,
    )

    X_train, _, y_train, _ = cancer
    X, y = X_train[:200, :8], y_train[:200]
    net, Xtr, _ = tiny_mlp
    models = {
        "logistic": (LogisticRegression(n_bits=6).fit(X, y), X, {}),
        "ridge": (Ridge(n_bits=6).fit(X, X[:, 0]), X, {}),
        "tree": (DecisionTreeClassifier(max_depth=3, n_bits=5, random_state=0).fit(X, y), X, {}),
        "forest": (RandomForestClassifier(n_estimators=3, max_depth=3, n_bits=4, random_state=0).fit(X, y), X, {}),
        "xgboost": (XGBClassifier(n_estimators=3, max_depth=2, n_bits=4).fit(X, y), X, {}),
        # k-NN is the model whose circuit holds tensor.extract / insert_slice with constant indices.
        "knn": (KNeighborsClassifier(n_neighbors=2, n_bits=2).fit(X[:8, :2], y[:8]), X[:8, :2], {}),
        "mlp_rounded": (net, Xtr, {"n_bits": 4, "rounding_threshold_bits": 4}),
        "mlp_exact": (net, Xtr, {"n_bits": 3, "rounding_threshold_bits": None}),
    }
    return {name: he_compute.compile(m, Xc, scheme="tfhe", **o) for name, (m, Xc, o) in models.items()}


@pytest.fixture(scope="module")
def servers(bundles):
    """The server sections of each bundle: what a worker receives."""
    return {name: dict(bundle.server) for name, bundle in bundles.items()}


def _python(code: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter: what it does to its process cannot touch the tests'."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, timeout=timeout,
                          check=False)


def _signature(mlir: str) -> tuple[str, str]:
    """(argument type, encrypted element type) of a compiled circuit's one function."""
    match = re.search(r"func\.func @\w+\(%arg0: (tensor<1x\d+x(!FHE\.e\w+<\d+>)>)\)", mlir)
    assert match, mlir[:200]
    return match.group(1), match.group(2)


def _inject(server: dict, *, top: str = "", body: str = "") -> dict:
    """A copy of ``server`` with ``top`` added before the function and ``body`` before its return."""
    mlir = server["circuit.mlir"].decode()
    assert mlir.startswith("module {\n") and mlir.count("    return ") == 1
    crafted = mlir.replace("    return ", body + "    return ", 1).replace("module {\n", "module {\n" + top, 1)
    return {**server, "circuit.mlir": crafted.encode()}


def _replace(server: dict, pattern: str, replacement: str) -> dict:
    """A copy of ``server`` with the first match of ``pattern`` in its circuit replaced (it must match)."""
    crafted, n = re.subn(pattern, replacement, server["circuit.mlir"].decode(), count=1)
    assert n == 1, pattern
    return {**server, "circuit.mlir": crafted.encode()}


def _attacks(server: dict) -> dict[str, tuple[dict, str]]:
    """Each attack on the real logistic-regression circuit, with the refusal it must get."""
    mlir = server["circuit.mlir"].decode()
    T, E = _signature(mlir)
    idx = "    %c0 = arith.constant 0 : index\n    %cbig = arith.constant 100000 : index\n"
    return {
        # (1) a declaration without a body, in both spellings: external code the compiler aborts on.
        "declaration": (_inject(server, top=f"  func.func nested @f({T}) -> {T}\n"),
                        "declares function @f without a body"),
        "declaration_generic": (_inject(server, top=(
            f'  "func.func"() ({{}}) {{function_type = ({T}) -> {T}, sym_name = "f", sym_visibility = "nested"}}'
            " : () -> ()\n")), "declares function @f without a body"),
        # (2) a call spelled without a space, to a function that has a body.
        "call_no_space": (_inject(server, top=f"  func.func nested @g(%a: {T}) -> {T} {{\n    return %a : {T}\n  }}\n",
                                  body=f"    %called = call@g(%arg0) : ({T}) -> {T}\n"),
                          "calls a function \\('func.call'\\)"),
        # (3) a generic op whose name is escaped: \6C is "l", so this is llvm.inline_asm.
        "escaped_inline_asm": (_inject(server, body='    "\\6Clvm.inline_asm"() {asm_string = "int3", constraints = ""}'
                                                    " : () -> ()\n"), "'llvm.inline_asm'"),
        # (4) out-of-bounds reads, with a constant index and with a computed one.
        "extract_out_of_bounds": (_inject(server, body=idx + f"    %x = tensor.extract %arg0[%c0, %cbig] : {T}\n"),
                                  "reads element \\[0, 100000\\].*out of bounds"),
        "extract_slice_out_of_bounds": (_inject(server, body=(
            f"    %s = tensor.extract_slice %arg0[0, 100000] [1, 1] [1, 1] : {T} to tensor<1x1x{E}>\n")),
            "'tensor.extract_slice' at offsets \\[0, 100000\\].*out of bounds"),
        "extract_computed_index": (_inject(server, body=idx + (
            "    %cidx = arith.constant dense<[100000]> : tensor<1xindex>\n"
            "    %i = tensor.extract %cidx[%c0] : tensor<1xindex>\n"
            f"    %x = tensor.extract %arg0[%c0, %i] : {T}\n")), "with a value that is not a constant"),
        # (5) out-of-bounds writes: tensor.insert (never emitted) and tensor.insert_slice (emitted, checked).
        "insert_out_of_bounds": (_inject(server, body=idx + (
            f"    %x = tensor.extract %arg0[%c0, %c0] : {T}\n"
            f"    %w = tensor.insert %x into %arg0[%c0, %cbig] : {T}\n")), "'tensor.insert'"),
        "insert_slice_out_of_bounds": (_inject(server, body=(
            f"    %s = tensor.extract_slice %arg0[0, 0] [1, 1] [1, 1] : {T} to tensor<1x1x{E}>\n"
            f"    %w = tensor.insert_slice %s into %arg0[0, 100000] [1, 1] [1, 1] : tensor<1x1x{E}> into {T}\n")),
            "'tensor.insert_slice' at offsets \\[0, 100000\\].*out of bounds"),
        # (6) ops of dialects not on the list: memref (escaped: \6D is "m"), and an endless scf.while,
        # a dialect the regular expressions allowed wholesale.
        "memref_alloc": (_inject(server, body='    %m = "\\6Demref.alloc"() {operand_segment_sizes = array<i32: 0, 0>}'
                                              " : () -> memref<16xi64>\n"), "'memref.alloc'"),
        "scf_while_forever": (_inject(server, body=(
            "    %c0 = arith.constant 0 : index\n    %w = scf.while (%i = %c0) : (index) -> index {\n"
            "      %true = arith.constant true\n      scf.condition(%true) %i : index\n    } do {\n"
            "    ^bb0(%j: index):\n      scf.yield %j : index\n    }\n")), "'scf.while'"),
        # Structure: a second public function, a renamed entry point, an attribute that steers lowering.
        "second_function": (_inject(server, top=f"  func.func @g(%a: {T}) -> {T} {{\n    return %a : {T}\n  }}\n"),
                            "defines 2 functions"),
        "renamed_entry": (_replace(server, r"func\.func @\w+", "func.func @main"),
                          "defines function @main where client.specs.json names"),
        # An escaped attribute name (\6C is "l"): llvm.emit_c_interface changes what the compiler emits.
        "llvm_attribute": (_replace(server, r"(func\.func @\w+\(.*) \{\n",
                                    r'\1 attributes {"\\6Clvm.emit_c_interface"} {\n'),
                           "sets attribute 'llvm.emit_c_interface' on 'func.func'"),
        # Sizes: a splat constant is a few bytes of text and hundreds of megabytes once materialized.
        "huge_constant": (_inject(server, body="    %big = arith.constant dense<7> : tensor<100000000xi64>\n"),
                          "tensor of 100000000 elements"),
        "huge_encrypted_tensor": (_inject(server, body=f'    %z = "FHE.zero_tensor"() : () -> tensor<4096x4096x{E}>\n'),
                                  "tensor of 16777216 elements"),
    }


KINDS = ["logistic", "ridge", "tree", "forest", "xgboost", "knn", "mlp_rounded", "mlp_exact"]
ATTACKS = [
    "declaration", "declaration_generic", "call_no_space", "escaped_inline_asm", "extract_out_of_bounds",
    "extract_slice_out_of_bounds", "extract_computed_index", "insert_out_of_bounds", "insert_slice_out_of_bounds",
    "memref_alloc", "scf_while_forever", "second_function", "renamed_entry", "llvm_attribute", "huge_constant",
    "huge_encrypted_tensor",
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_real_circuit_passes(servers, kind):
    check_server_sections(servers[kind])  # the cache was emptied, so the child really ran


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_refused_by_structure(servers, attack):
    crafted, message = _attacks(servers["logistic"])[attack]
    with pytest.raises(he_compute.UnsafeArtifactError, match=message) as refusal:
        check_server_sections(crafted)
    assert "\n" not in str(refusal.value) and "re-export the model with Concrete ML" in str(refusal.value)


def test_out_of_range_lookup_map_is_refused(servers):
    """The map of apply_mapped_lookup_table picks a table at run time: a real tree's map, pointed past the end."""
    crafted = _replace(servers["tree"], r"(arith\.constant dense<\[\[)\d+(\].*xindex>)", r"\g<1>100000\2")
    with pytest.raises(he_compute.UnsafeArtifactError, match="lookup tables outside its"):
        check_server_sections(crafted)


def test_lookup_map_is_read_from_both_printed_forms():
    """The printer writes small index tensors in decimal and large ones in hex: both must read back exactly."""
    from mlir import ir
    from mlir._mlir_libs._concretelang import register_dialects

    from he_compute.schemes.tfhe._mlir_walk import _index_entries

    with ir.Context() as context:
        register_dialects(context)
        for n in (5, 400):
            values = [(7 * i) % 13 for i in range(n)]
            t = f"tensor<{n}x1xindex>"
            module = ir.Module.parse(f"func.func @f() -> {t} {{\n %c = arith.constant dense<{[[v] for v in values]}> "
                                     f": {t}\n return %c : {t}\n}}")
            printed = str(module.body.operations[0].regions[0].blocks[0].operations[0].attributes["value"])
            assert printed.startswith('dense<"0x' if n > 100 else "dense<[[")
            assert _index_entries(printed) == values


def test_out_of_bounds_extract_in_a_real_knn_circuit_is_refused(servers):
    """k-NN circuits index with constants: moving one of those constants past the end is refused."""
    mlir = servers["knn"]["circuit.mlir"].decode()
    assert "tensor.extract %" in mlir and "tensor.insert_slice" in mlir
    crafted = _replace(servers["knn"], r"(%c1 = arith\.constant )1( : index)", r"\g<1>1000\2")
    with pytest.raises(he_compute.UnsafeArtifactError, match="'tensor.extract' out of bounds"):
        check_server_sections(crafted)


def test_unparseable_circuit_is_a_format_error(servers):
    mlir = servers["logistic"]["circuit.mlir"].replace(b"FHELinalg.matmul_eint_int", b"FHELinalg.no_such_op")
    with pytest.raises(he_compute.FormatError, match="circuit.mlir is not valid MLIR: .*no_such_op"):
        check_server_sections({**servers["logistic"], "circuit.mlir": mlir})


def test_the_parser_reads_every_attack_without_crashing(servers, tmp_path):
    """The attacks are accepted by Concrete's parser itself: refusing them is the walk's work."""
    paths = []
    for name, (crafted, _) in _attacks(servers["logistic"]).items():
        paths.append(tmp_path / f"{name}.mlir")
        paths[-1].write_bytes(crafted["circuit.mlir"])
    child = _python(_PARSE_ONLY, *paths)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    assert len(child.stdout.decode().splitlines()) == len(paths)


def test_a_circuit_that_crashes_the_parser_is_refused_and_the_caller_survives(servers, tmp_path):
    """Deeply nested brackets overflow the MLIR parser's stack: in-process, that would kill the worker."""
    depth = 100_000
    nested = b"module attributes {x = " + b"[" * depth + b"]" * depth + b"} {"
    deep = servers["logistic"]["circuit.mlir"].replace(b"module {", nested, 1)
    (tmp_path / "deep.mlir").write_bytes(deep)
    child = _python(_PARSE_ONLY, tmp_path / "deep.mlir")
    assert child.returncode == -signal.SIGSEGV  # positive control: the bindings alone die
    with pytest.raises(he_compute.UnsafeArtifactError, match=r"crashed Concrete's MLIR parser \(SIGSEGV\)"):
        check_server_sections({**servers["logistic"], "circuit.mlir": deep})


_OLD_PATH = """
import pathlib, sys
from he_compute.schemes.tfhe import server
server.check_server_sections = lambda sections: None  # the regular expressions let these texts through
sections = {p.name: p.read_bytes() for p in pathlib.Path(sys.argv[1]).iterdir()}
try:
    server.TFHEServer(sections)
except Exception as exc:
    print("refused:", exc)
    sys.exit(3)
print("compiled")
"""


def test_declaration_aborts_concretes_compiler_without_the_check(bundles, servers, tmp_path):
    """Positive control: compiled as the worker compiles it, the body-less declaration kills the process."""
    crafted, _ = _attacks(servers["logistic"])["declaration"]
    for name, data in crafted.items():
        (tmp_path / name).write_bytes(data)
    child = _python(_OLD_PATH, tmp_path)
    assert child.returncode == -signal.SIGABRT, (child.returncode, child.stdout, child.stderr[-2000:])
    # With the check, the worker refuses the same server part before compiling it.
    honest = bundles["logistic"]
    evil = Bundle.create("tfhe", {k: v for k, v in honest.manifest.items() if k != "model_id"}, honest.client, crafted)
    with pytest.raises(he_compute.UnsafeArtifactError, match="without a body"):
        he_compute.Evaluator(evil.server_part())


def test_check_runs_once_per_circuit(servers, monkeypatch):
    calls = []
    real = mlir_check._run_walker
    monkeypatch.setattr(mlir_check, "_run_walker", lambda *a: calls.append(a) or real(*a))
    for _ in range(3):
        check_server_sections(servers["tree"])
    assert len(calls) == 1


def test_check_child_gets_no_environment(servers, monkeypatch):
    """The child that parses a stranger's text inherits none of the worker's credentials."""
    seen = []
    real_run = subprocess.run
    monkeypatch.setenv("HEC_SECRET_FOR_TEST", "x")
    monkeypatch.setattr(mlir_check.subprocess, "run", lambda cmd, **kw: seen.append((cmd, kw)) or real_run(cmd, **kw))
    check_server_sections(servers["ridge"])
    ((command, kwargs),) = seen
    assert command[:2] == [sys.executable, "-I"] and kwargs["env"] == {}
