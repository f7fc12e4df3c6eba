"""Turn a Concrete ML deployment (client.zip + server.zip) into plain-data bundle sections.

Concrete's own loaders are not safe on foreign input: ``Server.load`` reads
``configuration.json`` with jsonpickle and, when ``circuit.mlir`` is absent,
dlopens a precompiled ``server.so``; Concrete ML's ``serialized_processing.json``
stores the model class with skops, or with pickle as a fallback.  Here every
one of those files is parsed with :mod:`json`, :mod:`zipfile` and
:mod:`pickletools` only (nothing is executed), checked against allow-lists,
and rewritten as plain JSON.  The circuit itself is parsed by Concrete's own MLIR
parser and walked operation by operation (:mod:`.mlir_check`).  The same checks run
again on every load.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path
from typing import Any

from ...errors import FormatError, UnsafeArtifactError
from .mlir_check import check_circuit

SERVER_SECTIONS = frozenset({"circuit.mlir", "configuration.json", "client.specs.json", "composition_rules.json"})
_SERVER_ZIP_FILES = {"circuit.mlir", "configuration.json", "client.specs.json", "composition_rules.json",
                     "is_simulated", "versions.json"}

# jsonpickle encodes these configuration enums as {"py/reduce": [{"py/type": T}, {"py/tuple": [v]}]}.
_CONFIG_ENUMS = {
    "parameter_selection_strategy": "ParameterSelectionStrategy",
    "multi_parameter_strategy": "MultiParameterStrategy",
    "rounding_exactness": "Exactness",
    "security_level": "SecurityLevel",
}
# Options that make the compiler write files, print, or weaken keys are pinned on load.
PINNED_OPTIONS: dict[str, Any] = {
    "verbose": False, "compiler_debug_mode": False, "compiler_verbose_mode": False, "show_graph": False,
    "show_bit_width_constraints": False, "show_bit_width_assignments": False, "show_assigned_graph": False,
    "show_mlir": False, "show_optimizer": False, "show_statistics": False, "show_progress": False,
    "dump_artifacts_on_unexpected_failures": False, "use_insecure_key_cache": False,
    "insecure_key_cache_location": None, "enable_unsafe_features": False, "print_tlu_fusing": False,
    "additional_pre_processors": [], "additional_post_processors": [],
}
_PROCESSING_TYPES = frozenset({
    "UniformQuantizer", "UniformQuantizationParameters", "QuantizationOptions", "MinMaxQuantizationStats",
    "QuantizedArray", "numpy_integer", "numpy_float", "numpy_array", "tuple", "set", "Exactness",
})
_TYPE_PICKLE_OPS = frozenset({"PROTO", "FRAME", "SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "MEMOIZE",
                              "PUT", "BINPUT", "LONG_BINPUT", "STACK_GLOBAL", "GLOBAL", "STOP"})


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from exc


def _refuse_python_objects(obj: Any, what: str) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if str(key).startswith("py/"):
                raise UnsafeArtifactError(f"{what} contains a serialized Python object ({key}): refusing to load it")
            _refuse_python_objects(value, what)
    elif isinstance(obj, list):
        for value in obj:
            _refuse_python_objects(value, what)


def plain_configuration(jsonpickled: bytes) -> dict[str, Any]:
    """Convert Concrete's jsonpickle'd ``configuration.json`` into plain JSON values, or refuse."""
    raw = _json(jsonpickled, "configuration.json")
    if not isinstance(raw, dict):
        raise FormatError("configuration.json must hold a JSON object")
    plain: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _CONFIG_ENUMS and isinstance(value, dict) and "py/reduce" in value:
            try:
                (ptype, args) = value["py/reduce"]
                ok = ptype == {"py/type": f"concrete.fhe.compilation.configuration.{_CONFIG_ENUMS[key]}"}
                (value,) = args["py/tuple"]
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                raise UnsafeArtifactError(f"configuration.json: unexpected object in {key!r}; refusing to load it")
        elif key == "approximate_rounding_config" and isinstance(value, dict):
            if value.pop("py/object", None) != "concrete.fhe.compilation.configuration.ApproximateRoundingConfig":
                raise UnsafeArtifactError("configuration.json: unexpected approximate_rounding_config object")
        plain[key] = value
    check_configuration(plain)
    return plain


def check_configuration(config: Any) -> None:
    """Refuse a configuration that is not plain JSON data."""
    if not isinstance(config, dict):
        raise FormatError("configuration.json must hold a JSON object")
    _refuse_python_objects(config, "configuration.json")
    for key in ("additional_pre_processors", "additional_post_processors"):
        if config.get(key):
            raise UnsafeArtifactError(f"configuration.json sets {key}: refusing to load code hooks")


def check_mlir(text: bytes, entry: str | None = None) -> None:
    """Refuse MLIR that is not a plain Concrete ML circuit (see :mod:`.mlir_check`).

    ``entry`` is the circuit name from ``client.specs.json``: the one function must bear it.
    """
    check_circuit(text, entry)


def circuit_name(specs: Any) -> str:
    """The name of the single circuit that ``client.specs.json`` describes."""
    try:
        (circuit,) = specs["circuits"]
        name = circuit["name"]
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError("client.specs.json must describe exactly one named circuit") from exc
    if not isinstance(name, str):
        raise FormatError("client.specs.json names its circuit with something other than a string")
    return name


def check_server_sections(sections: dict[str, bytes]) -> None:
    """Every check a worker runs before Concrete sees a server part."""
    names = set(sections)
    if names != SERVER_SECTIONS:
        extra, missing = sorted(names - SERVER_SECTIONS), sorted(SERVER_SECTIONS - names)
        raise UnsafeArtifactError(
            f"TFHE server part must hold exactly {sorted(SERVER_SECTIONS)}"
            + (f"; unexpected {extra}" if extra else "") + (f"; missing {missing}" if missing else "")
        )
    check_configuration(_json(sections["configuration.json"], "configuration.json"))
    rules = _json(sections["composition_rules.json"], "composition_rules.json")
    _refuse_python_objects(rules, "composition_rules.json")
    if rules is not None and not isinstance(rules, list):
        raise FormatError("composition_rules.json must be a list or null")
    specs = _json(sections["client.specs.json"], "client.specs.json")
    _refuse_python_objects(specs, "client.specs.json")
    # Last, because it is the costly check (a child process), run once per circuit and process.
    check_mlir(sections["circuit.mlir"], circuit_name(specs))


def class_name_from_serialized_type(hex_value: str) -> str:
    """Read the class name out of Concrete ML's serialized ``model_type`` without loading it.

    Concrete ML writes it with skops (a zip holding ``schema.json``) or, as a
    fallback, with pickle; the pickle is only *disassembled* here.
    """
    data = bytes.fromhex(hex_value)
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            schema = json.loads(zf.read("schema.json"))
        if schema.get("__loader__") != "TypeNode":
            raise UnsafeArtifactError("model_type in serialized_processing.json is not a plain type")
        return f"{schema['__module__']}.{schema['__class__']}"
    strings: list[str] = []
    module_name: str | None = None
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name not in _TYPE_PICKLE_OPS:
                raise UnsafeArtifactError(f"model_type pickle uses opcode {op.name}: refusing it")
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                module_name = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL":
                module_name = ".".join(strings[-2:])
    except (ValueError, IndexError) as exc:
        raise FormatError(f"model_type in serialized_processing.json is unreadable: {exc}") from exc
    if not module_name:
        raise FormatError("model_type in serialized_processing.json names no class")
    return module_name


def check_processing(obj: Any, what: str = "processing.json") -> None:
    """Allow only Concrete ML quantizer types and numpy scalars/arrays in the processing JSON."""
    if isinstance(obj, dict):
        if "type_name" in obj and "serialized_value" in obj and obj["type_name"] not in _PROCESSING_TYPES:
            raise UnsafeArtifactError(f"{what} holds a {obj['type_name']!r} object: only quantizer data is accepted")
        _refuse_python_objects({k: v for k, v in obj.items() if k != "serialized_value"}, what)
        for value in obj.values():
            check_processing(value, what)
    elif isinstance(obj, list):
        for value in obj:
            check_processing(value, what)


def sections_from_deployment(directory: Path) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, Any]]:
    """Read ``client.zip`` and ``server.zip``; return (client sections, server sections, versions)."""
    paths = {name: directory / name for name in ("client.zip", "server.zip")}
    for name, path in paths.items():
        if not path.is_file():
            raise FormatError(f"{directory} has no {name}: pass a directory written by FHEModelDev(...).save()")
    try:
        with zipfile.ZipFile(paths["server.zip"]) as zf:
            names = set(zf.namelist())
            if "circuit.mlir" not in names:
                raise UnsafeArtifactError(
                    "server.zip holds a precompiled library, not circuit.mlir: re-save it with "
                    "FHEModelDev(...).save(via_mlir=True)"
                )
            unknown = sorted(names - _SERVER_ZIP_FILES)
            if unknown:
                raise UnsafeArtifactError(f"server.zip holds unexpected files {unknown}: refusing it")
            srv = {n: zf.read(n) for n in names}
        with zipfile.ZipFile(paths["client.zip"]) as zf:
            cli = {n: zf.read(n) for n in ("client.specs.json", "serialized_processing.json")}
            versions = _json(zf.read("versions.json"), "versions.json") if "versions.json" in zf.namelist() else {}
    except zipfile.BadZipFile as exc:
        raise FormatError(f"{directory}: not a valid Concrete ML deployment zip ({exc})") from exc
    except KeyError as exc:
        raise FormatError(f"{directory}: deployment zip lacks {exc}") from exc
    if srv.get("is_simulated", b"0").strip() != b"0":
        raise FormatError("server.zip was saved from a simulated circuit: compile with FHE execution")
    processing = _json(cli["serialized_processing.json"], "serialized_processing.json")
    model_type = processing.pop("model_type", None)
    if not (isinstance(model_type, dict) and model_type.get("type_name") == "type"):
        raise FormatError("serialized_processing.json lacks model_type")
    processing["model_class"] = class_name_from_serialized_type(model_type["serialized_value"])
    check_processing(processing)
    server = {
        "circuit.mlir": srv["circuit.mlir"],
        "configuration.json": json.dumps(plain_configuration(srv["configuration.json"]), sort_keys=True).encode(),
        "client.specs.json": srv.get("client.specs.json", cli["client.specs.json"]),
        "composition_rules.json": srv.get("composition_rules.json", b"null"),
    }
    client = {
        "client.specs.json": cli["client.specs.json"],
        "processing.json": json.dumps(processing, sort_keys=True).encode(),
    }
    check_server_sections(server)
    return client, server, versions


RESULT_SLACK = 64 * 1024
"""Bytes a serialized result may carry beyond its raw LWE coefficients (Cap'n Proto framing: ~300 seen)."""


def max_result_bytes(specs_json: bytes) -> int:
    """The most bytes one encrypted result of this circuit can take: its output's LWE coefficients
    (8 bytes each, from ``client.specs.json``) plus framing.  Checked before any result is deserialized."""
    try:
        (circuit,) = json.loads(specs_json)["circuits"]
        (output,) = circuit["outputs"]
        dims = output["typeInfo"]["lweCiphertext"]["concreteShape"]["dimensions"]
        words = 1
        for d in dims:
            words *= int(d)
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"client.specs.json does not describe one encrypted output ({exc}): re-compile") from exc
    return 8 * words + RESULT_SLACK


def check_result_size(payload: bytes, specs_json: bytes, n_samples: int) -> None:
    """Refuse a TFHE result that is empty, for more than one sample, or larger than the circuit's output."""
    bound = max_result_bytes(specs_json)
    if n_samples != 1:
        raise FormatError(f"a TFHE result holds one sample, this one claims {n_samples}")
    if not 0 < len(payload) <= bound:
        raise FormatError(f"the encrypted result is {len(payload)} bytes; this circuit's output takes at most "
                          f"{bound}: it is not a result of this model")
