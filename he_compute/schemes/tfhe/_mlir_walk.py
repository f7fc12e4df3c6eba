"""Child program: parse a circuit with Concrete's own MLIR parser and walk it against an allow-list.

Run only by :mod:`.mlir_check`, as ``python -I _mlir_walk.py ENTRY [ROOT]`` with the
MLIR text on stdin; it prints one JSON verdict on stdout.  It imports nothing but the
standard library and Concrete's MLIR bindings, because it runs in a child process
of its own: the MLIR parser (and the bindings themselves) crash on some inputs, and
a crash here must cost a refusal, not a worker.

What it accepts is what Concrete ML 1.9 emits (the op and attribute names below were
collected from the ``circuit.mlir`` of linear models, GLMs, SVMs, trees, random forests,
XGBoost, k-NN, built-in neural nets and torch MLPs/CNNs with and without rounding):
one public function with a body, encrypted tensors in and out, region-free FHE and
FHELinalg ops, integer constants, and tensor reshapes/slices whose indices are
constants within static bounds.  Everything else is refused, whatever its spelling,
because the walk sees parsed operations, not text.
"""

from __future__ import annotations

import json
import math
import re
import resource
import sys
from typing import Any

# The attributes each operation may carry.  An op absent here is refused; an attribute
# absent here is refused too (discardable attributes such as llvm.* could steer lowering).
_SLICE_ATTRS = frozenset({"operand_segment_sizes", "static_offsets", "static_sizes", "static_strides"})
BODY_OPS: dict[str, frozenset[str]] = {
    "FHE.zero_tensor": frozenset(),
    "FHELinalg.add_eint": frozenset(),
    "FHELinalg.add_eint_int": frozenset(),
    "FHELinalg.apply_lookup_table": frozenset(),
    "FHELinalg.apply_mapped_lookup_table": frozenset(),
    "FHELinalg.concat": frozenset({"axis"}),
    "FHELinalg.conv2d": frozenset({"dilations", "group", "padding", "strides"}),
    "FHELinalg.lsb": frozenset(),
    "FHELinalg.matmul_eint_int": frozenset(),
    "FHELinalg.matmul_int_eint": frozenset(),
    "FHELinalg.maxpool2d": frozenset({"dilations", "kernel_shape", "strides"}),
    "FHELinalg.mul_eint": frozenset(),
    "FHELinalg.mul_eint_int": frozenset(),
    "FHELinalg.reinterpret_precision": frozenset(),
    "FHELinalg.round": frozenset(),
    "FHELinalg.sub_eint": frozenset(),
    "FHELinalg.sub_eint_int": frozenset(),
    "FHELinalg.sub_int_eint": frozenset(),
    "FHELinalg.sum": frozenset({"axes", "keep_dims"}),
    "FHELinalg.to_signed": frozenset(),
    "FHELinalg.to_unsigned": frozenset(),
    "FHELinalg.transpose": frozenset({"axes"}),
    "arith.constant": frozenset({"value"}),
    "func.return": frozenset(),
    "tensor.collapse_shape": frozenset({"reassociation"}),
    "tensor.expand_shape": frozenset({"reassociation"}),
    "tensor.extract": frozenset(),
    "tensor.extract_slice": _SLICE_ATTRS,
    "tensor.from_elements": frozenset(),
    "tensor.insert_slice": _SLICE_ATTRS,
}
FUNC_ATTRS = frozenset({"function_type", "sym_name"})

# Sizes a stranger's circuit may ask for.  Real Concrete ML circuits stay far below:
# the largest tensors seen are convolution outputs of a few thousand ciphertexts and
# weight matrices of a few thousand integers.
MAX_ENCRYPTED_ELEMENTS = 1 << 20  # ciphertexts in one tensor (each is kilobytes at run time)
MAX_CLEAR_ELEMENTS = 1 << 24  # integers in one clear tensor
MAX_CONSTANT_ELEMENTS = 1 << 26  # integers in all constants together
MAX_INT_WIDTH = 64  # bits of a clear integer (Concrete ML uses up to i64)
MAX_ENCRYPTED_WIDTH = 64  # bits of an encrypted integer
# Operations in the one function.  Concrete's compile time grows faster than linearly with the op count
# (a chain of 1,000 add_eint_int took 53 s); Concrete ML's circuits have tens to a few hundred.
MAX_OPERATIONS = 2000

# The child's own limits, set once the bindings are loaded and before reading the input.
_LIMITS = {
    "RLIMIT_AS": 4 << 30,
    "RLIMIT_CPU": 60,
    "RLIMIT_FSIZE": 0,
    "RLIMIT_CORE": 0,
    "RLIMIT_NOFILE": 16,
}
_REDO = "re-export the model with Concrete ML (FHEModelDev(...).save(via_mlir=True))"
_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class Refusal(Exception):
    """The circuit is refused: ``kind`` is "unsafe" or "format", the message is one line."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _unsafe(message: str) -> Refusal:
    return Refusal("unsafe", f"circuit.mlir {message}: refusing it; {_REDO}")


def _one_line(text: str, limit: int = 200) -> str:
    """Messages quote the stranger's text: keep it to one short line of printable characters."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split())[:limit])


class _Walker:
    """Checks one parsed module; every method raises :class:`Refusal` on the first problem."""

    def __init__(self, ir, fhe, context, entry: str | None):
        self.ir = ir
        self.entry = entry
        self.constant_elements = 0
        self.operations = 0
        widths = range(1, MAX_ENCRYPTED_WIDTH + 1)
        # Types are uniqued per context, so equality with library-built types is exact.
        self.encrypted = {fhe.EncryptedIntegerType.get(context, w) for w in widths}
        self.encrypted |= {fhe.EncryptedSignedIntegerType.get(context, w) for w in widths}

    def module(self, module) -> None:
        root = module.operation
        if root.name != "builtin.module" or len(root.attributes):
            raise _unsafe("is not a plain module")
        functions = []
        # Operations first, in text order, so that a refusal names the op that an attack hides.
        for op, parent in _walk(root):
            if op.name == "func.func" and parent == "builtin.module":
                self.declaration(op)
                functions.append(op)
            elif op is not root and parent != "func.func":
                raise _unsafe(f"nests operation '{op.name}' inside '{parent}'")
            elif op is not root:
                self.operations += 1
                if self.operations > MAX_OPERATIONS:
                    raise _unsafe(f"has more than {MAX_OPERATIONS} operations (compiling it could take hours)")
                self.body_op(op)
        if len(functions) != 1:
            raise _unsafe(f"defines {len(functions)} functions where Concrete ML emits one")
        self.function(functions[0])

    def declaration(self, op) -> None:
        """A function without a body is a declaration of external code: the compiler aborts on it."""
        if len(op.regions[0].blocks) == 0:
            raise _unsafe(f"declares function @{self.name(op)} without a body (external code)")
        if len(op.regions[0].blocks) != 1:
            raise _unsafe(f"function @{self.name(op)} has several blocks")

    def name(self, op) -> str:
        """A function's name, shown as is when it is a plain identifier."""
        if "sym_name" not in op.attributes:
            return "?"
        name = self.ir.StringAttr(op.attributes["sym_name"]).value
        return name if _ENTRY.fullmatch(name) else ascii(name[:40])

    def function(self, op) -> None:
        ir = self.ir
        self.attributes(op, FUNC_ATTRS)  # refuses sym_visibility, llvm.* and the like
        shown = self.name(op)
        if self.entry is not None and shown != self.entry:
            raise _unsafe(f"defines function @{shown} where client.specs.json names @{self.entry}")
        signature = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
        for t in [*signature.inputs, *signature.results]:
            if not (ir.RankedTensorType.isinstance(t) and ir.RankedTensorType(t).element_type in self.encrypted):
                raise _unsafe(f"function @{shown} takes or returns {_one_line(str(t), 60)}, not an encrypted tensor")
            self.type(t, "func.func")

    def body_op(self, op) -> None:
        name = op.name
        if name.rsplit(".", 1)[-1] in ("call", "call_indirect"):
            raise _unsafe(f"calls a function ('{name}')")
        if name not in BODY_OPS:
            raise _unsafe(f"uses operation '{name}', which Concrete ML circuits never contain")
        self.attributes(op, BODY_OPS[name])
        for result in op.results:
            self.type(result.type, name)
        if name == "arith.constant":
            self.constant(op)
        elif name == "tensor.extract":
            self.extract(op)
        elif name in ("tensor.extract_slice", "tensor.insert_slice"):
            self.slice(op)
        elif name == "FHELinalg.apply_mapped_lookup_table":
            self.mapped_lookup(op)

    def attributes(self, op, allowed: frozenset[str]) -> None:
        for attribute in op.attributes:
            if attribute.name not in allowed:
                raise _unsafe(f"sets attribute '{_one_line(attribute.name, 60)}' on '{op.name}'")

    def type(self, t, where: str) -> None:
        ir = self.ir
        if ir.RankedTensorType.isinstance(t):
            tensor = ir.RankedTensorType(t)
            if not tensor.has_static_shape:
                raise _unsafe(f"'{where}' yields a tensor of dynamic shape")
            count = math.prod(tensor.shape)
            encrypted = tensor.element_type in self.encrypted
            limit = MAX_ENCRYPTED_ELEMENTS if encrypted else MAX_CLEAR_ELEMENTS
            if count > limit:
                raise _unsafe(f"'{where}' yields a tensor of {count} elements (limit {limit})")
            t = tensor.element_type
        if t in self.encrypted or ir.IndexType.isinstance(t):
            return
        if ir.IntegerType.isinstance(t) and ir.IntegerType(t).width <= MAX_INT_WIDTH:
            return
        raise _unsafe(f"'{where}' uses type {_one_line(str(t), 60)}, which Concrete ML circuits never contain")

    def constant(self, op) -> None:
        ir = self.ir
        value = op.attributes["value"]
        if ir.IntegerAttr.isinstance(value):
            return
        if not ir.DenseIntElementsAttr.isinstance(value):
            raise _unsafe("holds a constant that is not a plain integer tensor")
        # The type check above bounds one constant; this bounds them all together.
        self.constant_elements += math.prod(ir.RankedTensorType(op.results[0].type).shape)
        if self.constant_elements > MAX_CONSTANT_ELEMENTS:
            raise _unsafe(f"holds more than {MAX_CONSTANT_ELEMENTS} constant integers")

    def constant_index(self, value, what: str) -> int:
        """The value of an index defined by ``arith.constant``; anything computed is refused."""
        owner = value.owner
        if not isinstance(owner, self.ir.Operation) or owner.name != "arith.constant":
            raise _unsafe(f"indexes '{what}' with a value that is not a constant")
        return self.ir.IntegerAttr(owner.attributes["value"]).value

    def extract(self, op) -> None:
        shape = self.ir.RankedTensorType(op.operands[0].type).shape
        indices = [self.constant_index(v, op.name) for v in list(op.operands)[1:]]
        if len(indices) != len(shape) or any(not 0 <= i < d for i, d in zip(indices, shape)):
            raise _unsafe(f"reads element {indices} of a tensor of shape {shape} ('{op.name}' out of bounds)")

    def slice(self, op) -> None:
        ir = self.ir
        extract = op.name == "tensor.extract_slice"
        # Offsets, sizes and strides given as operands are dynamic: only the static form is accepted.
        if len(op.operands) != (1 if extract else 2):
            raise _unsafe(f"uses '{op.name}' with dynamic offsets, sizes or strides")
        shape = ir.RankedTensorType(op.operands[0 if extract else 1].type).shape
        keys = ("static_offsets", "static_sizes", "static_strides")
        parts = [list(ir.DenseI64ArrayAttr(op.attributes[k])) for k in keys]
        if any(len(p) != len(shape) for p in parts):
            raise _unsafe(f"uses '{op.name}' with a rank other than its tensor's")
        for dim, offset, size, stride in zip(shape, *parts):
            # Dynamic entries carry a negative sentinel, so they fail the sign tests too.
            inside = offset >= 0 and size >= 0 and stride >= 1 and (
                offset + (size - 1) * stride < dim if size > 0 else offset <= dim
            )
            if not inside:
                raise _unsafe(
                    f"uses '{op.name}' at offsets {parts[0]}, sizes {parts[1]}, strides {parts[2]} "
                    f"on a tensor of shape {shape} (out of bounds)"
                )

    def mapped_lookup(self, op) -> None:
        """The map picks a row of the lookup tables at run time: every entry must name a row."""
        ir = self.ir
        tables = ir.RankedTensorType(op.operands[1].type).shape
        owner = op.operands[2].owner
        if not isinstance(owner, ir.Operation) or owner.name != "arith.constant":
            raise _unsafe(f"indexes '{op.name}' with a map that is not a constant")
        entries = _index_entries(str(owner.attributes["value"]))
        if entries is None or not entries or any(not 0 <= e < tables[0] for e in entries):
            raise _unsafe(f"maps '{op.name}' to lookup tables outside its {tables[0]} tables")


def _index_entries(printed: str) -> list[int] | None:
    """Read the entries of a dense ``index`` tensor from the library's own printing of it.

    The bindings abort the process when asked for elements of an ``index`` tensor, so the
    values are read from the printer's two canonical forms: a decimal list, or a hex
    blob of little-endian 64-bit words for large tensors.  Anything else reads as None.
    """
    match = re.fullmatch(r'dense<(.*)> : tensor<[0-9x]*xindex>', printed, re.DOTALL)
    if not match:
        return None
    body = match.group(1)
    if body.startswith('"0x') and body.endswith('"'):
        raw = bytes.fromhex(body[3:-1])
        return [int.from_bytes(raw[i:i + 8], "little", signed=True) for i in range(0, len(raw), 8)]
    if re.fullmatch(r"[\[\]\s,0-9-]*", body):
        return [int(x) for x in re.findall(r"-?[0-9]+", body)]
    return None


def _walk(root):
    """Every operation under ``root`` (included) with its parent's name, depth first in text order.

    An explicit stack rather than recursion: nesting depth is the stranger's choice.
    """
    stack = [(root, None)]
    while stack:
        op, parent = stack.pop()
        yield op, parent
        children = [(child.operation, op.name) for region in op.regions for block in region.blocks
                    for child in block.operations]
        stack.extend(reversed(children))


def check(text: str, entry: str | None) -> None:
    """Parse ``text`` with Concrete's dialects registered and walk it; raise :class:`Refusal`."""
    from mlir import ir
    from mlir._mlir_libs._concretelang import _fhe, register_dialects

    with ir.Context() as context, ir.Location.unknown():
        context.enable_multithreading(False)  # one core is enough, and no thread pool to limit
        register_dialects(context)
        errors: list[str] = []
        def keep(diagnostic: Any) -> bool:
            errors.append(str(diagnostic.message))
            return True  # handled: MLIR prints nothing itself

        handler = context.attach_diagnostic_handler(keep)
        try:
            try:
                module = ir.Module.parse(text)
            except Exception as exc:  # noqa: BLE001 - the bindings raise ValueError, but do not promise it
                reason = errors[0] if errors else str(exc)
                raise Refusal("format", f"circuit.mlir is not valid MLIR: {_one_line(reason)}") from None
            _Walker(ir, _fhe, context, entry).module(module)
        finally:
            handler.detach()


def _limit_self() -> None:
    # Only ever lower a limit: inside a worker's sandbox the inherited hard limits may already be tighter.
    for name, value in _LIMITS.items():
        kind = getattr(resource, name)
        hard = resource.getrlimit(kind)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))


def main(argv: list[str]) -> int:
    """``_mlir_walk.py ENTRY [ROOT]``: ENTRY is the expected function name ('' for any)."""
    entry = argv[1] or None
    if len(argv) > 2:
        sys.path.append(argv[2])  # where the parent found the bindings; -I leaves PYTHONPATH out
    import mlir.ir  # noqa: F401 - load the libraries before the address-space limit
    from mlir._mlir_libs import _concretelang  # noqa: F401

    _limit_self()
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
        check(text, entry)
        verdict = {"verdict": "ok"}
    except UnicodeDecodeError:
        verdict = {"verdict": "format", "message": "circuit.mlir is not UTF-8 text"}
    except Refusal as refusal:
        verdict = {"verdict": refusal.kind, "message": str(refusal)}
    sys.stdout.write(json.dumps(verdict) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
