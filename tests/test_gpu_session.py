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


RUN = "resnet20-fmnist-re-300ep"  # the one run the script still has to finish


@pytest.fixture
def session_repo(tmp_path):
    """A copy of the script in a repository layout, with the Fashion-MNIST files carried."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(REPO / "benchmarks" / "gpu_session.sh", tmp_path / "benchmarks")
    (tmp_path / ".fmnist").mkdir()
    (tmp_path / ".fmnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return tmp_path


def _commit_unfinished(repo, name, iteration):
    unfinished = repo / "checkpoints" / "unfinished" / name
    unfinished.mkdir(parents=True)
    (unfinished / "checkpoint.pt").write_text(json.dumps({"iteration": iteration}))
    (unfinished / "config.json").write_text("{}")
    (unfinished / "metrics.jsonl").write_text("")


def _run(repo, *, env_extra=None, seconds="5"):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(repo / "fake-python"), "OUT": str(repo / "out"), **(env_extra or {})}
    return subprocess.run(
        ["bash", str(repo / "benchmarks" / "gpu_session.sh"), seconds],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _tar_members(path):
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read().decode() for member in tar.getmembers()}


def _logged_args(log):
    return json.loads(log.split("ARGS ", 1)[1].splitlines()[0])


def test_resumes_committed_checkpoint_and_packs_it(session_repo):
    _commit_unfinished(session_repo, RUN, 17642)
    result = _run(session_repo)
    assert result.returncode == 0, result.stderr
    out = session_repo / "out"
    # finished runs (zoo records, their folders gone from checkpoints/unfinished/) are not started again
    assert sorted(p.name for p in out.iterdir()) == ["machine.txt", f"{RUN}.tar"]
    resumed = _tar_members(out / f"{RUN}.tar")
    files = ("checkpoint.pt", "config.json", "metrics.jsonl", "train.log")
    assert set(resumed) == {f"{RUN}/{f}" for f in files}
    assert json.loads(resumed[f"{RUN}/checkpoint.pt"])["iteration"] == 18142
    args = _logged_args(resumed[f"{RUN}/train.log"])
    assert args[2] == "resnet20" and "--resume" in args and "--schedule" not in args
    for flag, value in [("--epochs", "300"), ("--erasing-fill", "mean"), ("--weight-decay", "5e-4"),
                        ("--random-erasing", "0.5"), ("--amp", "bf16")]:  # fmt: skip
        assert args[args.index(flag) + 1] == value, flag
    # the run's own evaluation and checkpoint intervals (every epoch) come last, so they win
    for flag in ("--eval-every", "--checkpoint-every"):
        last = max(i for i, arg in enumerate(args) if arg == flag)
        assert args.count(flag) == 2 and args[last + 1] == "468", flag


def test_starts_afresh_then_a_second_call_resumes_from_its_own_output(session_repo):
    assert _run(session_repo).returncode == 0
    out = session_repo / "out"
    fresh = _tar_members(out / f"{RUN}.tar")
    assert "--resume" not in _logged_args(fresh[f"{RUN}/train.log"])
    assert json.loads(fresh[f"{RUN}/checkpoint.pt"])["iteration"] == 500
    with tarfile.open(out / f"{RUN}.tar") as tar:
        tar.extractall(out, filter="data")
    assert _run(session_repo).returncode == 0
    packed = _tar_members(out / f"{RUN}.tar")
    assert "--resume" in _logged_args(packed[f"{RUN}/train.log"])
    assert json.loads(packed[f"{RUN}/checkpoint.pt"])["iteration"] == 1000


def test_refuses_a_subset_that_names_no_run(session_repo):
    result = _run(session_repo, env_extra={"ONLY": "resnet56-fmnist-re-cos-random"})
    assert result.returncode == 2
    assert 'ONLY="resnet56-fmnist-re-cos-random" names none of this script\'s runs: ' + RUN in result.stderr
    assert not (session_repo / "out" / "machine.txt").exists()


def test_refuses_to_start_without_fashion_mnist(session_repo):
    shutil.rmtree(session_repo / ".fmnist")
    result = _run(session_repo, env_extra={"FASHION_MNIST_DIR": str(session_repo / "none")})
    assert result.returncode == 2
    assert not (session_repo / "out" / "machine.txt").exists()
    assert f"no Fashion-MNIST training split in {session_repo / 'none'}" in result.stderr
    assert "carry .fmnist" in result.stderr


def test_uses_the_carried_copy(session_repo):
    assert _run(session_repo, env_extra={"ONLY": RUN}).returncode == 0
    log = _tar_members(session_repo / "out" / f"{RUN}.tar")[f"{RUN}/train.log"]
    assert f"DATA {session_repo / '.fmnist'}\n" in log  # what the real trainer would read
