"""pladis.entmax vs torch.softmax vs the `entmax` package on one (81920, 77) float32 tensor, one CPU thread.

Prints each method's best time over interleaved rounds and its ratio to softmax measured in the same run.
Run: .venv/bin/python benchmarks/bench_entmax.py [--rows 81920] [--rounds 7]
"""

import argparse
import time

import torch

import pladis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=81920)
    parser.add_argument("--cols", type=int, default=77)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sweep", action="store_true", help="also time 20 alphas in [1, 2] (one process)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.rows, args.cols, device=args.device) * 3
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    methods = {
        "torch.softmax": lambda: torch.softmax(x, -1),
        "pladis.entmax a=1.5": lambda: pladis.entmax(x, 1.5),
        "pladis.entmax a=1.25": lambda: pladis.entmax(x, 1.25),
        "pladis.entmax a=2 (sparsemax)": lambda: pladis.entmax(x, 2.0),
    }
    try:
        import entmax as package

        methods["entmax pkg entmax15"] = lambda: package.entmax15(x, dim=-1)
        methods["entmax pkg entmax_bisect a=1.25"] = lambda: package.entmax_bisect(x, alpha=1.25, dim=-1)
    except ImportError:
        print("(the `entmax` package is not installed: its rows are skipped)")

    for fn in methods.values():  # warm-up, includes compilation
        fn()
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(args.rounds):
        for name, fn in methods.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)

    base = best["torch.softmax"]
    print(
        f"input {tuple(x.shape)} float32 on {args.device}, {args.threads} thread(s), best of {args.rounds} interleaved rounds"
    )
    print(f"{'method':34s} {'ms':>9s} {'x softmax':>10s}")
    for name, t in best.items():
        print(f"{name:34s} {t * 1e3:9.2f} {t / base:10.2f}")
    if args.sweep:
        alphas = [round(a, 4) for a in torch.linspace(1.05, 2.0, 20).tolist()]
        sweep = {a: float("inf") for a in alphas}
        for a in alphas:  # warm-up: compiles at most one graph per alpha kind
            pladis.entmax(x, a)
        for _ in range(max(3, args.rounds)):  # as many rounds as above: a kind switch can slow one call
            sync()
            start = time.perf_counter()
            torch.softmax(x, -1)
            sync()
            base = min(base, time.perf_counter() - start)
            for a in alphas:
                sync()
                start = time.perf_counter()
                pladis.entmax(x, a)
                sync()
                sweep[a] = min(sweep[a], time.perf_counter() - start)
        print("\nalpha sweep (one process, after the first call of each):")
        print("  ".join(f"{a:g}: {t / base:.2f}x" for a, t in sweep.items()))
        print(f"worst {max(sweep.values()) / base:.2f}x softmax, at alpha {max(sweep, key=sweep.__getitem__):g}")


if __name__ == "__main__":
    main()
