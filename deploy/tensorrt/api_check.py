"""``python -m deploy.tensorrt.api_check [--bindings WHEEL_OR_SO] [FILE ...]``: our TensorRT code
uses no API that TensorRT 11 removed.

TensorRT 11 requires strongly typed networks and removed the weak-typing precision API (NVIDIA's
"Migrating from TensorRT 10.x to 11.x" and its removed-Python-API list). This project's TensorRT code
cannot run where it is developed, so two static checks stand in:

1. **The documented list** (:data:`REMOVED_IN_TENSORRT_11`): every attribute chain in our files is
   matched against it (``trt.BuilderFlag.FP16``, ``config.int8_calibrator``, a subclass of
   ``trt.IInt8EntropyCalibrator2``, ...). Needs nothing installed.
2. **The real 11.x bindings**: the ``tensorrt-cu13-bindings`` wheel (1.3 MB, installable without
   TensorRT's libraries, but not importable without them) holds the compiled module, whose pybind11
   registrations keep every Python-visible name as a C string. Every TensorRT name our files use
   (a name of the 10.x API, per ``tensorrt-stubs``, or reached through the ``tensorrt`` module
   itself) must be among them. This catches removals the list misses.

Exit status: 0 clean, 1 a removed API is used (each use printed with file and line), 2 the check
could not run (bindings or stubs missing).
"""

from __future__ import annotations

import argparse
import ast
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TOOLS = REPO / ".tools"
BINDINGS_SO = "tensorrt_bindings/tensorrt.so"

# From NVIDIA's TensorRT 11 migration guide (removed Python API). "Class.member" entries match an
# attribute chain ending in both names; a bare name matches that attribute wherever it is used.
REMOVED_IN_TENSORRT_11: dict[str, str] = {
    "BuilderFlag.FP16": "precision lives in the ONNX graph: export an fp16 graph (deploy.export --precision fp16)",
    "BuilderFlag.INT8": "use explicit Q/DQ nodes in the ONNX graph (deploy.export --precision int8)",
    "BuilderFlag.BF16": "bf16 tensors in the ONNX graph",
    "BuilderFlag.FP8": "FP8 Q/DQ nodes in the ONNX graph",
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS": "strongly typed networks follow the graph's types",
    "BuilderFlag.PREFER_PRECISION_CONSTRAINTS": "strongly typed networks follow the graph's types",
    "int8_calibrator": "implicit INT8 calibration is gone: calibrate on the CPU into Q/DQ nodes",
    "set_calibration_profile": "implicit INT8 calibration is gone",
    "get_calibration_profile": "implicit INT8 calibration is gone",
    "IInt8Calibrator": "implicit INT8 calibration is gone",
    "IInt8EntropyCalibrator": "implicit INT8 calibration is gone",
    "IInt8EntropyCalibrator2": "implicit INT8 calibration is gone",
    "IInt8MinMaxCalibrator": "implicit INT8 calibration is gone",
    "IInt8LegacyCalibrator": "implicit INT8 calibration is gone",
    "CalibrationAlgoType": "implicit INT8 calibration is gone",
    "platform_has_fast_fp16": "query the GPU's compute capability instead",
    "platform_has_fast_int8": "query the GPU's compute capability instead",
    "ILayer.precision": "strongly typed networks take each layer's type from its inputs",
    "ILayer.set_output_type": "strongly typed networks take each layer's type from its inputs",
}


class CheckUnavailable(RuntimeError):
    """The bindings wheel or the stubs are missing."""


@dataclass(frozen=True)
class Use:
    file: Path
    line: int
    chain: tuple[str, ...]  # e.g. ("trt", "BuilderFlag", "FP16"); ("", "int8_calibrator") for config.int8_calibrator

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {'.'.join(part for part in self.chain if part)}"


def _chain(node: ast.expr) -> tuple[str, ...]:
    """``a.b.c`` -> ("a", "b", "c"); a chain rooted in a call or subscript starts with ""."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "")
    return tuple(reversed(parts))


def tensorrt_aliases(tree: ast.Module) -> set[str]:
    """Names the ``tensorrt`` module is bound to in a file (``import tensorrt as trt`` -> {"trt"})."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {alias.asname or alias.name for alias in node.names if alias.name == "tensorrt"}
    return aliases


def attribute_uses(file: Path) -> tuple[list[Use], set[str]]:
    """Every maximal attribute chain in ``file`` (and names imported from tensorrt), and the tensorrt aliases."""
    tree = ast.parse(file.read_text(), str(file))
    aliases = tensorrt_aliases(tree)
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    uses = [Use(file, node.lineno, _chain(node)) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and id(node) not in inner]  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "tensorrt" and node.level == 0:
            uses += [Use(file, node.lineno, ("tensorrt", alias.name)) for alias in node.names]
            aliases.add("tensorrt")
    return uses, aliases


def documented_removals(uses: Iterable[Use]) -> list[tuple[Use, str]]:
    found = []
    for use in uses:
        for removed, hint in REMOVED_IN_TENSORRT_11.items():
            wanted = tuple(removed.split("."))
            bare = len(wanted) == 1 and wanted[0] in use.chain[1:]
            if bare or (len(wanted) == 2 and any(use.chain[i : i + 2] == wanted for i in range(len(use.chain) - 1))):
                found.append((use, hint))
    return found


def bindings_strings(path: Path) -> bytes:
    """The compiled 11.x module's bytes, from the wheel or from an unpacked ``tensorrt.so``."""
    if not path.exists():
        raise CheckUnavailable(f"{path}: not found (make fetches it: pip download --no-deps tensorrt-cu13-bindings)")
    if path.suffix == ".whl":
        try:
            with zipfile.ZipFile(path) as wheel:
                return wheel.read(BINDINGS_SO)
        except (zipfile.BadZipFile, KeyError) as error:
            raise CheckUnavailable(f"{path}: not a TensorRT bindings wheel with {BINDINGS_SO} ({error})") from None
    return path.read_bytes()


def has_name(binary: bytes, name: str) -> bool:
    """Whether ``name`` is a C string of the module; the linker may store it as the tail of a longer one
    ("INT8" inside "UINT8"), so a null-terminated suffix counts."""
    return name.encode() + b"\0" in binary


def stub_vocabulary(stubs_dir: Path) -> set[str]:
    """Every class, function, method and attribute name of the 10.x API (tensorrt-stubs' .pyi files)."""
    files = sorted(stubs_dir.glob("tensorrt*/**/*.pyi"))
    if not files:
        raise CheckUnavailable(f"{stubs_dir}: no tensorrt-stubs .pyi files (pip install --no-deps --target "
                               f"{stubs_dir} tensorrt-stubs)")  # fmt: skip
    from .typecheck import FixCounts, fix_stub_text  # the published stubs do not parse as they are

    names: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(fix_stub_text(file.read_text(), FixCounts()), str(file))):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


def own_names(files: Iterable[Path]) -> set[str]:
    """Names our own code defines (functions, classes, fields, ``self.x`` attributes): an attribute
    spelled like a 10.x API name (``options.precision``) is ours when we define it."""
    names: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {t.attr for t in targets if isinstance(t, ast.Attribute) and _chain(t)[0] == "self"}
    return names


def missing_from_bindings(uses: Iterable[Use], aliases: set[str], vocabulary: set[str], binary: bytes,
                          ours: frozenset[str] | set[str] = frozenset()) -> list[Use]:  # fmt: skip
    """Uses of a TensorRT name (10.x vocabulary and not one of ``ours``, or reached through the
    tensorrt module) absent in 11.x."""
    missing = []
    for use in uses:
        rooted = use.chain[0] in aliases
        names = use.chain[1:]
        candidates = names if rooted else [name for name in names if name in vocabulary and name not in ours]
        if any(not has_name(binary, name) for name in candidates):
            missing.append(use)
    return missing


def tensorrt_files(root: Path = REPO / "deploy") -> list[Path]:
    """The modules that import tensorrt (they are what TensorRT 11 will run)."""
    found = []
    for file in sorted(root.rglob("*.py")):
        tree = ast.parse(file.read_text(), str(file))
        imports_from = any(
            isinstance(n, ast.ImportFrom) and n.module == "tensorrt" and n.level == 0 for n in ast.walk(tree)
        )
        if tensorrt_aliases(tree) or imports_from:
            found.append(file)
    return found


def default_bindings(tools: Path = DEFAULT_TOOLS) -> Path:
    wheels = sorted(tools.glob("tensorrt_cu*_bindings-11.*.whl"))
    if not wheels:
        raise CheckUnavailable(f"no tensorrt-cu13-bindings 11.x wheel in {tools} (make fetches it)")
    return wheels[-1]


def run_check(files: list[Path], bindings: Path | None, stubs: Path | None) -> tuple[list[str], list[str]]:
    """(problems, checks done); the documented-list check always runs, the bindings check where given."""
    problems: list[str] = []
    done = ["TensorRT 11 removed-API list"]
    per_file = [attribute_uses(file) for file in files]
    for uses, _ in per_file:
        problems += [f"{use}: removed in TensorRT 11 ({hint})" for use, hint in documented_removals(uses)]
    if bindings is not None:
        binary = bindings_strings(bindings)
        vocabulary = stub_vocabulary(stubs or DEFAULT_TOOLS / "tensorrt-stubs")
        ours = own_names(files)
        for uses, aliases in per_file:
            flagged = {str(p).split(": removed")[0] for p in problems}
            problems += [f"{use}: not in the TensorRT 11 bindings ({bindings.name})"
                         for use in missing_from_bindings(uses, aliases, vocabulary, binary, ours)
                         if str(use) not in flagged]  # fmt: skip
        done.append(f"names in {bindings.name}")
    return problems, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.tensorrt.api_check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "files", nargs="*", type=Path, help="files to check (default: every deploy module importing tensorrt)"
    )
    parser.add_argument("--bindings", type=Path, help="tensorrt-cu13-bindings 11.x wheel or its tensorrt.so "
                        f"(default: the newest in {DEFAULT_TOOLS})")  # fmt: skip
    parser.add_argument(
        "--stubs", type=Path, help=f"tensorrt-stubs install folder (default: {DEFAULT_TOOLS / 'tensorrt-stubs'})"
    )
    parser.add_argument(
        "--list-only", action="store_true", help="only the documented removed-API list (no wheel needed)"
    )
    args = parser.parse_args(argv)
    files = args.files or tensorrt_files()
    try:
        bindings = None if args.list_only else (args.bindings or default_bindings())
        problems, done = run_check(files, bindings, args.stubs)
    except CheckUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    names = ", ".join(str(f.relative_to(REPO)) if f.is_relative_to(REPO) else str(f) for f in files)
    print(f"{len(problems)} use(s) of APIs TensorRT 11 removed in {names} (checked: {'; '.join(done)})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
