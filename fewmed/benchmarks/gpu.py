"""The GPU path in one run (<= 10 min): CUDA tests, inner loop per task vs vmap, DAML full profile.

Needs a CUDA GPU; without one it stops at once with a message that says so
(exit status 2). Three steps, each with its own time limit, write
``gpu.json`` under ``--out``:

1. the CUDA tests (``pytest -m cuda`` and every test that skips without a GPU,
   selected with ``-k "cuda or gpu"``), run from the source tree;
2. the inner-loop benchmark on the GPU (``fewmed benchmark inner-loop --device
   cuda``): the per-task ``autograd`` loop against ``func`` (``vmap`` over the
   meta-batch), same meta-gradient; the target is vmap >= 3x the loop;
3. DAML at the full profile (84 px, Conv4-64, 5 second-order inner steps,
   augmentation) meta-trained on HAM10000's common classes for ``--iterations``
   and scored at ``k = --shot`` on the rare ones: mean AUC with its 95% CI over
   ``--n-tasks`` tasks.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fewmed.benchmarks._common import environment, output_dir, write_json


def add_arguments(parser) -> None:
    parser.add_argument("--data", default=None, help="HAM10000 folder (default: FEWMED_DATA)")
    parser.add_argument("--iterations", type=int, default=1000, help="DAML meta-iterations")
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--n-tasks", type=int, default=300)
    parser.add_argument("--steps", nargs="+", default=["tests", "inner-loop", "daml"])
    parser.add_argument("--out", default="fewmed_results/gpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cuda", help="cuda; 'cpu' only smoke-tests the DAML step"
    )
    parser.add_argument("-v", "--verbose", type=int, default=1)


class NoGPUError(SystemExit):
    """Raised (exit status 2) when the GPU benchmark runs on a machine without CUDA."""


def require_cuda() -> str:
    """The GPU's name, or :class:`NoGPUError` with what was found instead.

    Examples
    --------
    >>> import torch
    >>> if not torch.cuda.is_available():
    ...     try:
    ...         require_cuda()
    ...     except SystemExit as e:
    ...         print(e.code)
    2
    """
    import torch

    if not torch.cuda.is_available():
        print(
            "fewmed benchmark gpu needs a CUDA GPU, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no, a CPU build'}). "
            "Run it on a machine with an NVIDIA GPU and a CUDA build of torch; "
            "CUDA_VISIBLE_DEVICES selects the GPU.",
            file=sys.stderr,
        )
        raise NoGPUError(2)
    return torch.cuda.get_device_name(0)


def _step(name: str, cmd: list[str], timeout: float, log: Path) -> dict:
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, text = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}"
    log.write_text(str(text))
    tail = str(text).strip().splitlines()[-15:]
    print(f"--- {name}: exit {code} in {time.perf_counter() - t:.0f} s")
    print("\n".join(tail))
    return {"command": " ".join(cmd), "exit": code, "seconds": time.perf_counter() - t}


def _vmap_vs_loop(path: Path) -> dict:
    """vmap over the meta-batch (``func``) against the per-task ``autograd`` loop."""
    import json

    if not path.is_file():
        return {}
    res = json.loads(path.read_text())["results"]
    loop, vmap = res["fewmed autograd loop"], res["fewmed torch.func + vmap"]
    ratio = loop["median_s"] / vmap["median_s"]
    print(f"--- vmap over the meta-batch vs the per-task loop: {ratio:.2f}x (target >= 3x)")
    return {"vmap_vs_loop": ratio, "loop_s": loop["median_s"], "vmap_s": vmap["median_s"]}


def _daml(args, out: Path) -> dict:
    import numpy as np

    from fewmed import DAMLClassifier
    from fewmed.benchmarks.daml import COMMON, PROFILES, RARE
    from fewmed.datasets import load_ham10000_or_synthetic

    prof = PROFILES["full"]
    bunch, synthetic = load_ham10000_or_synthetic(
        args.data, size=prof["size"], synthetic=False, random_state=args.seed, verbose=0
    )
    y = np.asarray(bunch.target_names)[bunch.target]
    common, rare = np.isin(y, COMMON), np.isin(y, RARE)
    est = DAMLClassifier(
        n_filters=prof["n_filters"],
        n_shot=args.shot,
        n_iterations=args.iterations,
        difficulty_start=args.iterations // 2,
        n_inner_steps=prof["inner_steps"],
        augment=prof["augment"],
        device=args.device,
        random_state=args.seed,
        verbose=args.verbose,
    )
    t = time.perf_counter()
    est.fit(bunch.images[common], y[common])
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    ci = est.score_episodes(bunch.images[rare], y[rare], n_tasks=args.n_tasks, random_state=0)
    res = {
        "synthetic": synthetic,
        "k": args.shot,
        "iterations": args.iterations,
        "auc": ci.mean,
        "ci95": [ci.low, ci.high],
        "fit_seconds": fit_s,
        "score_seconds": time.perf_counter() - t,
    }
    print(f"--- DAML full profile, k={args.shot}: AUC {ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]")
    return res


def run(args) -> dict:
    gpu = require_cuda() if args.device != "cpu" else None
    out = output_dir(args.out)
    root = Path(__file__).resolve().parents[2]
    result = {"environment": environment(), "gpu": gpu}
    env_py = [sys.executable]
    if "tests" in args.steps:
        tests = root / "tests"
        cmd = [*env_py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)]
        cmd += ["-k", "cuda or gpu", "-x"]
        result["tests"] = _step("CUDA tests", cmd, 240, out / "tests.log")
    if "inner-loop" in args.steps:
        cmd = [*env_py, "-m", "fewmed.cli", "benchmark", "inner-loop", "--device", "cuda"]
        cmd += ["--out", str(out / "inner_loop")]
        result["inner_loop"] = _step("inner loop on the GPU", cmd, 120, out / "inner_loop.log")
        result["inner_loop"].update(_vmap_vs_loop(out / "inner_loop" / "inner_loop.json"))
    if "daml" in args.steps:
        result["daml"] = _daml(args, out)
    write_json(out / "gpu.json", result)
    print(f"wrote {out / 'gpu.json'}")
    return result
