"""Importing Concrete ML deployments, and refusing the ones that would run code.

Concrete's ``Server.load`` reads ``configuration.json`` with jsonpickle and
dlopens ``server.so`` when ``circuit.mlir`` is absent; Concrete ML's client
JSON may hold a pickle.  he_compute must refuse all of these *before* any of
them is loaded; the positive control shows that Concrete itself would run
the crafted payload.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import he_compute
from he_compute.formats.bundle import Bundle
from he_compute.cli import main


@pytest.fixture(scope="module")
def deployment(compiled, tmp_path_factory):
    """A real FHEModelDev deployment of the linear model."""
    from concrete.ml.deployment import FHEModelDev

    path = tmp_path_factory.mktemp("deploy") / "lr"
    FHEModelDev(str(path), compiled("linear").model).save(via_mlir=True)
    return path


def _rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes | None]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name in replace:
                continue
            zout.writestr(name, zin.read(name))
        for name, data in replace.items():
            if data is not None:
                zout.writestr(name, data)


def _crafted(deployment: Path, tmp: Path, server: dict | None = None, client: dict | None = None) -> Path:
    out = tmp / "crafted"
    _rewrite_zip(deployment / "server.zip", out / "server.zip", server or {})
    _rewrite_zip(deployment / "client.zip", out / "client.zip", client or {})
    return out


def _evil_config(deployment: Path, marker: Path) -> bytes:
    with zipfile.ZipFile(deployment / "server.zip") as zf:
        config = json.loads(zf.read("configuration.json"))
    config["verbose"] = {"py/reduce": [{"py/function": "os.system"}, {"py/tuple": [f"touch {marker}"]}]}
    return json.dumps(config).encode()


def test_import_and_run_matches_concrete_clear(deployment, compiled, cancer, tmp_path):
    _, X_test, _, _ = cancer
    result = CliRunner().invoke(main, ["import-concrete", str(deployment), "-o", str(tmp_path / "m.hec")])
    assert result.exit_code == 0, result.output
    bundle = he_compute.load_bundle(tmp_path / "m.hec")
    client = he_compute.Client.keygen(bundle, tmp_path / "keys")
    evaluator = he_compute.Evaluator(bundle.server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    out = client.decrypt(evaluator.evaluate(client.encrypt(X_test[:5]), keys))
    np.testing.assert_allclose(out, compiled("linear").model.predict_proba(X_test[:5], fhe="disable"), atol=1e-9)


def test_concrete_itself_would_run_the_jsonpickle_payload(deployment, tmp_path):
    """Positive control: the crafted configuration really is code when Concrete loads it."""
    marker = tmp_path / "pwned-by-concrete"
    crafted = _crafted(deployment, tmp_path, server={"configuration.json": _evil_config(deployment, marker)})
    code = f"from concrete import fhe\ntry:\n fhe.Server.load({str(crafted / 'server.zip')!r})\nexcept Exception:\n pass"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=300)
    assert marker.exists()


def test_jsonpickle_configuration_is_refused(deployment, tmp_path):
    marker = tmp_path / "pwned"
    crafted = _crafted(deployment, tmp_path, server={"configuration.json": _evil_config(deployment, marker)})
    with pytest.raises(he_compute.UnsafeArtifactError, match="py/reduce"):
        he_compute.import_concrete(crafted)
    assert not marker.exists()


def test_precompiled_library_is_refused(deployment, tmp_path):
    crafted = _crafted(deployment, tmp_path, server={"circuit.mlir": None, "sharedlib.so": b"\x7fELF..."})
    result = CliRunner().invoke(main, ["import-concrete", str(crafted), "-o", str(tmp_path / "m.hec")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: server.zip holds a precompiled library, not circuit.mlir: re-save it with "
        "FHEModelDev(...).save(via_mlir=True)"
    ]
    assert not (tmp_path / "m.hec").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_model_type_is_disassembled_not_loaded(deployment, tmp_path):
    with zipfile.ZipFile(deployment / "client.zip") as zf:
        processing = json.loads(zf.read("serialized_processing.json"))
    processing["model_type"] = {"type_name": "type", "serialized_value": pickle.dumps(_Evil()).hex()}
    crafted = _crafted(deployment, tmp_path, client={"serialized_processing.json": json.dumps(processing).encode()})
    with pytest.raises(he_compute.UnsafeArtifactError, match="model_type pickle uses opcode"):
        he_compute.import_concrete(crafted)


def test_plainly_pickled_type_is_read_by_disassembly():
    """Concrete ML's pickle fallback for model_type (a bare class) is understood without unpickling."""
    from concrete.ml.sklearn import DecisionTreeClassifier

    from he_compute.schemes.tfhe.artifacts import class_name_from_serialized_type

    for protocol in (2, 4, 5):
        hex_value = pickle.dumps(DecisionTreeClassifier, protocol=protocol).hex()
        assert class_name_from_serialized_type(hex_value) == "concrete.ml.sklearn.tree.DecisionTreeClassifier"


def test_pickled_sklearn_object_in_processing_is_refused(deployment, tmp_path):
    with zipfile.ZipFile(deployment / "client.zip") as zf:
        processing = json.loads(zf.read("serialized_processing.json"))
    processing["model_post_processing_params"] = {"x": {"type_name": "sklearn_model", "serialized_value": "80"}}
    crafted = _crafted(deployment, tmp_path, client={"serialized_processing.json": json.dumps(processing).encode()})
    with pytest.raises(he_compute.UnsafeArtifactError, match="'sklearn_model' object"):
        he_compute.import_concrete(crafted)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.update({"server.so": b"\x7fELF"}), "unexpected"),
        (lambda s: s.update({"configuration.json": b'{"verbose": {"py/object": "os.system"}}'}), "py/object"),
        (lambda s: s.update({"circuit.mlir": s["circuit.mlir"].replace(
            b"module {", b"module {\n  func.func private @system(i64) -> i64\n")}), "without a body"),
        (lambda s: s.update({"circuit.mlir": s["circuit.mlir"].replace(
            b"    return", b'    "llvm.inline_asm"() {asm_string = "int3", constraints = ""} : () -> ()\n    return')}),
         "'llvm.inline_asm'"),
    ],
)
def test_crafted_bundles_are_refused_on_load_and_by_workers(compiled, tmp_path, mutate, message):
    """An attacker can compute a valid model id: the checks must not depend on it."""
    good = compiled("linear").bundle
    server = dict(good.server)
    mutate(server)
    evil = Bundle.create("tfhe", {k: v for k, v in good.manifest.items() if k != "model_id"}, good.client, server)
    evil.to_container().save(tmp_path / "evil.hec")
    with pytest.raises(he_compute.UnsafeArtifactError, match=message):
        he_compute.load_bundle(tmp_path / "evil.hec")
    with pytest.raises(he_compute.UnsafeArtifactError, match=message):
        he_compute.Evaluator(evil.server_part())
