"""benchmarks/gpu_session.sh, run with a stand-in trainer: what it resumes, passes and brings back.

The script only ever runs inside a device call with minutes of GPU time, so its resume logic and its
packing are checked here, where a mistake costs nothing.
"""

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Stands in for `python`: `python -` runs the real interpreter (the machine report); `python -m
# backbones.train ARCH ... --output DIR [--resume]` records its arguments and writes the files a
# trainer stopped by SIGTERM leaves behind.
FAKE_PYTHON = f"""#!{sys.executable}
import json, os, sys
from pathlib import Path
if sys.argv[1:] == ["-"]:
    exec(sys.stdin.read())
    sys.exit(0)
args = sys.argv[1:]
assert args[:2] == ["-m", "backbones.train"], args
out = Path(args[args.index("--output") + 1])
out.mkdir(parents=True, exist_ok=True)
start = json.loads((out / "checkpoint.pt").read_text())["iteration"] if "--resume" in args else 0
(out / "checkpoint.pt").write_text(json.dumps({{"iteration": start + 500}}))
(out / "config.json").write_text(json.dumps({{"arch": args[2]}}))
with open(out / "metrics.jsonl", "a") as log:
    log.write(json.dumps({{"kind": "eval", "iteration": start + 500, "top1_err": 5.0}}) + "\\n")
print("ARGS", json.dumps(args))
print("DATA", os.environ.get("FASHION_MNIST_DIR"))
"""


@pytest.fixture
def session_repo(tmp_path):
    """A copy of the script in a repository layout, with one run's unfinished checkpoint committed."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(REPO / "benchmarks" / "gpu_session.sh", tmp_path / "benchmarks")
    unfinished = tmp_path / "checkpoints" / "unfinished" / "resnet56-fmnist-re-cos-random"
    unfinished.mkdir(parents=True)
    (unfinished / "checkpoint.pt").write_text(json.dumps({"iteration": 24000}))
    (unfinished / "config.json").write_text("{}")
    (unfinished / "metrics.jsonl").write_text("")
    (tmp_path / ".fmnist").mkdir()
    (tmp_path / ".fmnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return tmp_path


def _run(repo, *, env_extra, seconds="5"):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(repo / "fake-python"), "OUT": str(repo / "out"), **env_extra}
    return subprocess.run(
        ["bash", str(repo / "benchmarks" / "gpu_session.sh"), seconds],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _tar_members(path):
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read().decode() for member in tar.getmembers()}


def _logged_args(log):
    return json.loads(log.split("ARGS ", 1)[1].splitlines()[0])


def test_resumes_committed_checkpoint_and_packs_each_run(session_repo):
    result = _run(session_repo, env_extra={"ONLY": "resnet56-fmnist-re-cos-random resnet20-fmnist-re-300ep"})
    assert result.returncode == 0, result.stderr
    out = session_repo / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "machine.txt",
        "resnet20-fmnist-re-300ep.tar",
        "resnet56-fmnist-re-cos-random.tar",
    ]
    resumed = _tar_members(out / "resnet56-fmnist-re-cos-random.tar")
    files = ("checkpoint.pt", "config.json", "metrics.jsonl", "train.log")
    assert set(resumed) == {f"resnet56-fmnist-re-cos-random/{f}" for f in files}
    assert json.loads(resumed["resnet56-fmnist-re-cos-random/checkpoint.pt"])["iteration"] == 24500
    args = _logged_args(resumed["resnet56-fmnist-re-cos-random/train.log"])
    assert args[2] == "resnet56" and "--resume" in args
    for flag, value in [("--schedule", "cosine"), ("--erasing-fill", "random"), ("--weight-decay", "5e-4"),
                        ("--random-erasing", "0.5"), ("--amp", "bf16"), ("--checkpoint-every", "500")]:  # fmt: skip
        assert args[args.index(flag) + 1] == value, flag

    fresh = _tar_members(out / "resnet20-fmnist-re-300ep.tar")
    args = _logged_args(fresh["resnet20-fmnist-re-300ep/train.log"])
    assert "--resume" not in args and "--schedule" not in args and args[args.index("--epochs") + 1] == "300"
    # the run's own evaluation and checkpoint intervals (every epoch) come last, so they win
    for flag in ("--eval-every", "--checkpoint-every"):
        last = max(i for i, arg in enumerate(args) if arg == flag)
        assert args.count(flag) == 2 and args[last + 1] == "468", flag
    assert json.loads(fresh["resnet20-fmnist-re-300ep/checkpoint.pt"])["iteration"] == 500


def test_second_call_resumes_from_its_own_output(session_repo):
    only = {"ONLY": "resnet20-fmnist-re-300ep"}
    assert _run(session_repo, env_extra=only).returncode == 0
    out = session_repo / "out"
    with tarfile.open(out / "resnet20-fmnist-re-300ep.tar") as tar:
        tar.extractall(out, filter="data")
    assert _run(session_repo, env_extra=only).returncode == 0
    packed = _tar_members(out / "resnet20-fmnist-re-300ep.tar")
    assert json.loads(packed["resnet20-fmnist-re-300ep/checkpoint.pt"])["iteration"] == 1000


def test_refuses_to_start_without_fashion_mnist(session_repo):
    shutil.rmtree(session_repo / ".fmnist")
    result = _run(session_repo, env_extra={"FASHION_MNIST_DIR": str(session_repo / "none")})
    assert result.returncode == 2
    assert not (session_repo / "out" / "machine.txt").exists()
    assert f"no Fashion-MNIST training split in {session_repo / 'none'}" in result.stderr
    assert "carry .fmnist" in result.stderr


def test_uses_the_carried_copy(session_repo):
    assert _run(session_repo, env_extra={"ONLY": "resnet20-fmnist-re-300ep"}).returncode == 0
    log = _tar_members(session_repo / "out" / "resnet20-fmnist-re-300ep.tar")["resnet20-fmnist-re-300ep/train.log"]
    assert f"DATA {session_repo / '.fmnist'}\n" in log  # what the real trainer would read
