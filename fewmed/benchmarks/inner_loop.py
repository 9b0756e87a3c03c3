"""Speed of one second-order meta-iteration: fewmed's inner-loop backends vs a higher loop.

The paper configuration: 4 tasks, 2-way 5-shot + 15 query, 5 inner steps,
Conv4-64, 28 px. The baseline is the straightforward per-task ``higher`` loop
(``innerloop_ctx`` + differentiable SGD) on a Conv4 in the usual
conv-BN-ReLU-pool order; every candidate is timed in the same run on the same
tasks and must give the same meta-gradient (the maximum difference is printed,
against the baseline and against the ``autograd`` loop run on one torch thread,
which is what the ``threads`` backend computes). Besides the ratio of the medians,
it reports the speed-up within each round of the interleaved repetitions (the
baseline's time over the candidate's, measured seconds apart): its median and
interquartile range show how much of a difference is the machine's speed
drifting between rounds.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from fewmed.benchmarks._common import environment, format_table, output_dir, write_json


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="fewmed_results/inner_loop")
    parser.add_argument("--seed", type=int, default=0)


def _classic_order(model):
    """The same weights in the usual conv -> BN -> ReLU -> pool order, with torch's layers.

    torch's ``max_pool2d`` and ``F.batch_norm`` (whose double backward is
    torch's composite one) instead of fewmed's faster versions, and the query set
    normalised with support statistics by the textbook formula (so the
    meta-gradient is the same), as fewmed's own layers did before.
    """
    from fewmed.nn import ReferenceBatchNorm2d

    class TorchReferenceBatchNorm2d(ReferenceBatchNorm2d):
        def forward(self, x):
            if self.n_ref is None:
                return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
            ref = x[: self.n_ref]  # the textbook formula, as one would write it by hand
            mean = ref.mean(dim=(0, 2, 3), keepdim=True)
            var = (ref - mean).square().mean(dim=(0, 2, 3), keepdim=True)
            xhat = (x - mean) * torch.rsqrt(var + self.eps)
            return xhat * self.weight[None, :, None, None] + self.bias[None, :, None, None]

    base = copy.deepcopy(model)
    f = list(base.features)
    for i in range(1, len(f), 4):
        # on the model's device and dtype (the benchmark runs with --device cuda too)
        bn = TorchReferenceBatchNorm2d(f[i].num_features, f[i].eps).to(f[i].weight)
        bn.load_state_dict(f[i].state_dict())
        f[i] = bn
    base.features = torch.nn.Sequential(
        *[
            m
            for i in range(0, len(f), 4)
            for m in (f[i], f[i + 1], f[i + 3], torch.nn.MaxPool2d(f[i + 2].kernel_size))
        ]
    )
    return base


def run(args) -> dict:
    from fewmed._validation import seeded_torch
    from fewmed.fewshot import meta_batch_losses
    from fewmed.nn import Conv4, resolve_device

    device = resolve_device(args.device)
    repeats = args.repeats or (5 if args.quick else 15)
    g = torch.Generator().manual_seed(args.seed)
    T, k, q, s = 4, 5, 15, args.size  # noqa: N806
    XS = torch.rand(T, 2 * k, 3, s, s, generator=g).to(device)  # noqa: N806
    XQ = torch.rand(T, 2 * q, 3, s, s, generator=g).to(device)  # noqa: N806
    YS = torch.arange(2).repeat_interleave(k).repeat(T, 1).to(device)  # noqa: N806
    YQ = torch.arange(2).repeat_interleave(q).repeat(T, 1).to(device)  # noqa: N806
    with seeded_torch(args.seed):  # the CPU generator only; CUDA's are left alone
        model = Conv4(3, 2, args.filters, s, norm="reference").to(device)
    candidates = [
        ("higher loop (baseline)", _classic_order(model), "higher"),
        ("fewmed autograd loop", model, "autograd"),
        ("fewmed torch.func + vmap", model, "func"),
        ("fewmed higher", model, "higher"),
    ]
    if device.type == "cpu":  # the "threads" backend is for CPUs
        candidates.append(("fewmed threads (tasks in parallel)", model, "threads"))

    def once(net, backend):
        net.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        losses, _ = meta_batch_losses(
            net, XS, YS, XQ, YQ, lr=0.01, steps=args.inner_steps, backend=backend
        )
        losses.mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, torch.cat([p.grad.flatten() for p in net.parameters()])

    times: dict[str, list[float]] = {name: [] for name, _, _ in candidates}
    grads = {}
    for name, net, backend in candidates:  # warm-up
        _, grads[name] = once(net, backend)
    # the same loop on one torch thread: "threads" runs each task on one thread,
    # and with second-order terms the thread count moves the meta-gradient
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    _, one_thread = once(model, "autograd")
    torch.set_num_threads(previous)
    for _ in range(repeats):  # interleaved, so drifts in machine load hit all alike
        for name, net, backend in candidates:
            times[name].append(once(net, backend)[0])
    ref = grads["higher loop (baseline)"]
    base_times = np.asarray(times["higher loop (baseline)"])
    base = float(np.median(base_times))
    results = {}
    for name, _, _ in candidates:
        med = float(np.median(times[name]))
        # a round times every implementation within seconds, so a round's ratio
        # cancels most of the machine's drift between rounds
        paired = base_times / np.asarray(times[name])
        results[name] = {
            "median_s": med,
            "min_s": float(np.min(times[name])),
            "speedup": base / med,
            "paired_speedup": {
                "median": float(np.median(paired)),
                "q25": float(np.percentile(paired, 25)),
                "q75": float(np.percentile(paired, 75)),
                "per_round": paired.tolist(),
            },
            "max_grad_diff": float((grads[name] - ref).abs().max()),
            "max_grad_diff_one_thread": float((grads[name] - one_thread).abs().max()),
        }
    rows = [
        [
            n,
            f"{r['median_s'] * 1000:.0f} ms",
            f"{r['speedup']:.2f}x",
            f"{r['paired_speedup']['median']:.2f}x "
            f"({r['paired_speedup']['q25']:.2f}-{r['paired_speedup']['q75']:.2f})",
            f"{r['max_grad_diff']:.1e}",
            f"{r['max_grad_diff_one_thread']:.1e}",
        ]
        for n, r in results.items()
    ]
    print(
        f"one meta-iteration: {T} tasks, 2-way {k}-shot + {q} query, {args.inner_steps} "
        f"inner steps, Conv4-{args.filters}, {s} px, second order, {device}; "
        f"median of {repeats}"
    )
    print(
        format_table(
            rows,
            [
                "implementation",
                "time",
                "speed vs baseline",
                "per round (IQR)",
                "max |grad - baseline grad|",
                "max |grad - 1-thread loop grad|",
            ],
        )
    )
    out = output_dir(args.out)
    payload = {
        "benchmark": "inner-loop",
        "repeats": repeats,
        "results": results,
        "times": times,
        "environment": environment(),
    }
    write_json(out / "inner_loop.json", payload)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.boxplot([np.asarray(times[n]) * 1000 for n in results], vert=False)
    ax.set_yticks(range(1, len(results) + 1), list(results))
    ax.set_xlabel("ms per meta-iteration")
    fig.tight_layout()
    fig.savefig(out / "inner_loop.png", dpi=110)
    plt.close(fig)
    print(f"wrote {out / 'inner_loop.json'} and {out / 'inner_loop.png'}")
    return payload
