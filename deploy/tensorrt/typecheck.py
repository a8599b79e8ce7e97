"""``python -m deploy.tensorrt.typecheck [FILE ...]``: type-check TensorRT code where TensorRT cannot run.

TensorRT's wheels cannot be installed everywhere, but ``tensorrt-stubs`` describes its (10.x)
Python API. The stubs install an importable, empty ``tensorrt`` package, which makes tools that probe
``import tensorrt`` (Model Optimizer's ONNX quantizer, our own ``tensorrt_available``) misbehave on a
CPU, so they live outside the runtime environment: ``pip install --no-deps --target
.tools/tensorrt-stubs tensorrt-stubs`` (what ``make`` does; ``--stubs DIR`` or ``TENSORRT_STUBS`` point
elsewhere). As published, mypy cannot use them; three mechanical
fixes to a copy make it work (DESIGN.md, "TensorRT where TensorRT cannot be installed"):

1. plugin methods name parameters ``in`` / ``out`` (Python keywords: a syntax error): renamed ``in_`` / ``out_``;
2. a required parameter after defaulted ones (``add_scale_nd``'s ``channel_axis``): given ``= ...``,
   which keeps the real positional order;
3. ``import tensorrt_libs`` (a runtime-only package): dropped.

mypy then runs on our files (default: every module of deploy/tensorrt/ that imports tensorrt)
with MYPYPATH pointing at the fixed copy. Two kinds of report are noise and are filtered: errors
inside the stubs themselves (they are not silenced entirely by ``follow_imports = silent``), and
``arg-type`` errors for tuples/lists passed where ``Dims``/``Permutation`` is expected (pybind
converts them implicitly). Exit status: 0 clean, 1 real errors in our files, 2 the check could
not run (mypy or the stubs missing, stubs unparsable).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STUBS = REPO / ".tools" / "tensorrt-stubs"
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
# Modules our TensorRT files import besides tensorrt: not followed (fast, and their errors are not ours).
SKIPPED_IMPORTS = "torch.*,torchvision.*,numpy.*,PIL.*,onnx.*,onnxruntime.*,safetensors.*,backbones.*"
_IMPLICIT_DIMS = re.compile(
    r'has incompatible type "(tuple|list)\[.*\]"; expected "(Dims\w*|Permutation)"\s+\[arg-type\]'
)
_REPORT = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?:\d+:)? (?P<kind>error|note|warning): (?P<message>.*)$")


class CheckUnavailable(RuntimeError):
    """mypy or tensorrt-stubs is missing, or the stubs cannot be made usable."""


@dataclass
class FixCounts:
    keyword_parameters: int = 0
    default_order: int = 0
    runtime_imports: int = 0


def stubs_directory() -> Path:
    return Path(os.environ.get("TENSORRT_STUBS", DEFAULT_STUBS))


def default_files() -> list[Path]:
    from .api_check import tensorrt_files

    return tensorrt_files(REPO / "deploy" / "tensorrt")


def installed_stub_files(directory: Path | None = None) -> list[tuple[Path, Path]]:
    """(absolute path, path relative to the install folder) of every .pyi of tensorrt-stubs in ``directory``."""
    directory = directory or stubs_directory()
    found_dist = next(iter(metadata.distributions(name="tensorrt-stubs", path=[str(directory)])), None)
    if found_dist is None:
        raise CheckUnavailable(f"tensorrt-stubs is not installed in {directory} (pip install --no-deps --target "
                               f"{directory} tensorrt-stubs)")  # fmt: skip
    files = found_dist.files or []
    found = [(Path(str(f.locate())), Path(str(f))) for f in files
             if str(f).endswith(".pyi") and Path(str(f)).parts[0] in STUB_PACKAGES]  # fmt: skip
    if not found:
        raise CheckUnavailable("tensorrt-stubs is installed but lists no tensorrt/*.pyi files")
    return found


def _fix_signature(line: str, counts: FixCounts) -> str:
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*(?:->.*)?:.*)$", line, re.DOTALL)
    if not match:
        return line
    params = match.group(2).split(", ")
    fixed, seen_default = [], False
    for param in params:
        keyword = re.match(r"^(in|out)(?=\s*:)", param)
        if keyword:
            param = keyword.group(1) + "_" + param[len(keyword.group(1)) :]
            counts.keyword_parameters += 1
        name = param.split(":")[0].strip()
        if "=" in param:
            seen_default = True
        elif seen_default and name not in ("*", "/") and not name.startswith("*"):
            param += " = ..."
            counts.default_order += 1
        fixed.append(param)
    return match.group(1) + ", ".join(fixed) + match.group(3)


def fix_stub_text(text: str, counts: FixCounts) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        if re.match(r"^\s*import tensorrt_libs\b", line) or re.match(r"^\s*from tensorrt_libs\b", line):
            counts.runtime_imports += 1
            continue
        lines.append(_fix_signature(line, counts) if line.lstrip().startswith("def ") else line)
    return "".join(lines)


def prepare_stubs(destination: Path) -> FixCounts:
    """Copy the installed stubs into ``destination`` with the three fixes applied."""
    counts = FixCounts()
    for source, relative in installed_stub_files():
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(fix_stub_text(source.read_text(), counts))
    return counts


def _mypy_config(path: Path, cache: Path) -> None:
    path.write_text(
        "[mypy]\n"
        "follow_imports = silent\n"
        "check_untyped_defs = True\n"
        "warn_unused_ignores = False\n"
        "ignore_missing_imports = True\n"
        f"cache_dir = {cache}\n"
        f"\n[mypy-{SKIPPED_IMPORTS}]\n"
        "follow_imports = skip\n"
    )


def filter_report(output: str, files: list[Path]) -> tuple[list[str], int]:
    """Our files' errors (with their notes), and how many lines were dropped as noise."""
    ours = {f.resolve() for f in files}
    kept, dropped, keep_notes = [], 0, False
    for line in output.splitlines():
        match = _REPORT.match(line)
        if not match:
            continue  # summary lines ("Found N errors ...")
        in_ours = Path(match["file"]).resolve() in ours
        if match["kind"] == "note":
            if in_ours and keep_notes:
                kept.append(line)
            else:
                dropped += 1
            continue
        keep_notes = in_ours and not _IMPLICIT_DIMS.search(match["message"])
        if keep_notes:
            kept.append(line)
        else:
            dropped += 1
    return kept, dropped


def run_check(files: list[Path], verbose: bool = False) -> tuple[int, list[str]]:
    """Type-check ``files``; (exit status, report lines)."""
    if importlib.util.find_spec("mypy") is None:
        raise CheckUnavailable("mypy is not installed (pip install mypy)")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"no such file(s) to check: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="trt-stubs-") as tmp:
        stubs, config = Path(tmp) / "stubs", Path(tmp) / "mypy.ini"
        counts = prepare_stubs(stubs)
        _mypy_config(config, Path(tmp) / "cache")
        env = {**os.environ, "MYPYPATH": str(stubs)}
        command = [sys.executable, "-m", "mypy", "--config-file", str(config), "--show-error-codes",
                   "--no-error-summary", "--no-pretty", *map(str, files)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        output = result.stdout + result.stderr
    if "errors prevented further checking" in output or "INTERNAL ERROR" in output or result.returncode > 1:
        blocking = [line for line in output.splitlines() if "stubs" in line][:5] or output.splitlines()[-5:]
        raise CheckUnavailable("mypy could not check the files (stubs unparsable even after the fixes?):\n  "
                               + "\n  ".join(blocking))  # fmt: skip
    kept, dropped = filter_report(output, files)
    if verbose:
        print(f"stub fixes: {counts.keyword_parameters} in/out parameters renamed, {counts.default_order} "
              f"parameter defaults added, {counts.runtime_imports} tensorrt_libs imports dropped; "
              f"{dropped} report line(s) filtered as stub noise")  # fmt: skip
    return (1 if any(": error:" in line for line in kept) else 0), kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.tensorrt.typecheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="files to check (default: deploy's TensorRT modules)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    files = args.files or default_files()
    try:
        status, report = run_check(files, verbose=not args.quiet)
    except (CheckUnavailable, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in report:
        print(line)
    names = ", ".join(str(f) for f in files)
    errors = sum(": error:" in line for line in report)
    print(f"{errors} TensorRT type error(s) in {names}" if errors else f"no TensorRT type errors in {names}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
