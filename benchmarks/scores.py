"""Speed and memory of S_NND and S_LH against scikit-learn and scipy, for growing training banks.

    python -m benchmarks.scores [--device cpu|cuda] [--quick]

For each bank size n (D = 512 features, T queries) it times

* S_NND, ``con2lib.method.scores.nnd_score`` (exact, blocked; float16 bank on CUDA as in ``evaluate``),
  against ``sklearn.neighbors.NearestNeighbors(metric="cosine", algorithm="brute")`` (fit + kneighbors);
* S_LH, ``GaussianScorer(0.1)`` fit + score, against the same shrunk Gaussian with numpy
  (normalise, ``np.cov``) and ``scipy.stats.multivariate_normal(...).logpdf``.

Times are the best of a few repetitions. "Peak extra memory" is measured in a fresh process per
method and n, with the inputs already allocated: on CPU, the peak resident set size during the
first call minus the resident size just before it (Linux ``/proc/self/clear_refs`` resets the peak),
so it counts every allocation (torch, numpy, BLAS) that touched memory; on CUDA, for con2lib,
``torch.cuda.max_memory_allocated`` minus the allocation before the call.

S_NND's fraction of peak is 2 n T D flops / time / (a large matmul's FLOP/s in the bank's dtype,
float32 on CPU and float16 on CUDA, measured in the same process after each repetition: best time
against best peak). On CPU the fraction is also given by CPU time (FLOPs per CPU-second, for S_NND
and the matmul alike), which load from other processes on a shared machine does not lower.

The last line reads ``nnd_vs_sklearn=<x> nnd_matmul_peak_fraction=<y> nnd_peak_extra_mb=<z>`` for
the largest n.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import time
import traceback
from typing import Any

import numpy as np
import torch

from benchmarks.train_throughput import device_name, matmul_peak, sync

D = 512


def _status_kb(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1))


def _cpu_peaks(reps: int, n: int = 4096) -> tuple[float, float]:
    """Best float32 (n x n) matmul FLOP/s on CPU, per wall-clock second and per CPU-second of this process."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    wall, cpu = float("inf"), float("inf")
    for _ in range(reps):
        start, cpu_start = time.perf_counter(), time.process_time()
        a @ b
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - cpu_start)
    return 2 * n**3 / wall, 2 * n**3 / cpu


def _features(n: int, t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic float32 (n, D) bank and (T, D) queries: clustered, as encoder features are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, D), dtype=np.float32) * 2
    train = centres[rng.integers(0, 64, n)] + rng.standard_normal((n, D), dtype=np.float32)
    test = centres[rng.integers(0, 64, t)] + 1.2 * rng.standard_normal((t, D), dtype=np.float32)
    return train, test


def _methods(device: torch.device) -> dict[str, tuple[Any, Any]]:
    """name -> (prepare(train, test) -> inputs where the method keeps them, run(*inputs) -> (T,) numpy scores)."""
    from con2lib.method.evaluate import nnd_bank
    from con2lib.method.scores import GaussianScorer, nnd_score

    def on_device(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(train).to(device), torch.from_numpy(test).to(device)  # no copy on CPU

    def bank_on_device(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        bank, queries = on_device(train, test)
        return nnd_bank(bank), queries  # float16 on CUDA, as evaluate() keeps it

    def as_numpy(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return train, test

    def ours_nnd(bank: torch.Tensor, queries: torch.Tensor) -> np.ndarray:
        return nnd_score(queries, bank).cpu().numpy()

    def sklearn_nnd(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        from sklearn.neighbors import NearestNeighbors

        dist, _ = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(train).kneighbors(test)
        return dist[:, 0] - 1.0  # cosine distance 1 - cos  ->  S_NND = -cos

    def ours_lh(train: torch.Tensor, test: torch.Tensor) -> np.ndarray:
        return GaussianScorer(0.1).fit(train).score(test).cpu().numpy()

    def scipy_lh(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        from scipy.stats import multivariate_normal

        z = train / np.linalg.norm(train, axis=1, keepdims=True)
        zt = test / np.linalg.norm(test, axis=1, keepdims=True)
        cov = np.cov(z, rowvar=False)
        cov = 0.9 * cov + 0.1 * np.trace(cov) / D * np.eye(D)
        return -multivariate_normal(z.mean(0), cov).logpdf(zt)

    return {"nnd": (bank_on_device, ours_nnd), "sklearn": (as_numpy, sklearn_nnd), "lh": (on_device, ours_lh),
            "scipy": (as_numpy, scipy_lh)}


def _measure(method: str, n: int, t: int, device_type: str, reps: int, threads: int, queue: Any) -> None:
    """Runs in a fresh process: memory of the first call, best time of ``reps`` calls; puts a dict on ``queue``."""
    try:
        queue.put(_measure_here(method, n, t, torch.device(device_type), reps, threads))
    except BaseException:  # the parent waits on the queue: always answer
        queue.put({"error": traceback.format_exc()})


def _measure_here(method: str, n: int, t: int, device: torch.device, reps: int, threads: int) -> dict[str, Any]:
    if threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)  # numpy's and scikit-learn's BLAS and OpenMP pools alike
    gpu = device.type == "cuda" and method in ("nnd", "lh")
    if not gpu:
        device = torch.device("cpu")  # the baselines run on the CPU; no CUDA context in their memory
    prepare, fn = _methods(device)[method]
    inputs = prepare(*_features(n, t))
    if gpu:
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
        base = _status_kb("VmRSS") * 1024
    times, cpu_times, peaks, cpu_peaks = [], [], [], []
    for rep in range(reps):
        start, cpu_start = time.perf_counter(), time.process_time()
        scores = fn(*inputs)
        sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        if rep == 0:
            peak = torch.cuda.max_memory_allocated(device) if gpu else _status_kb("VmHWM") * 1024
        if method == "nnd":  # the peak in the dtype S_NND multiplies in (float16 on CUDA), after each repetition:
            # best time against best peak, whatever load other processes put on the machine meanwhile
            if gpu:
                peaks.append(matmul_peak(device, 8192, dtype=inputs[0].dtype))
            else:
                wall, cpu = _cpu_peaks(reps=2)
                peaks.append(wall)
                cpu_peaks.append(cpu)
    nan = float("nan")
    return {"seconds": min(times), "cpu_seconds": min(cpu_times), "extra_mb": (peak - base) / 2**20,
            "scores": scores, "peak": max(peaks, default=nan), "cpu_peak": max(cpu_peaks, default=nan)}


def measure(method: str, n: int, t: int, device: torch.device, reps: int, threads: int) -> dict[str, Any]:
    """One measurement in a fresh process (clean memory high-water mark and allocator).

    Forked on CPU (instant: the parent has only imported); spawned for CUDA, which is not fork-safe.
    """
    ctx = multiprocessing.get_context("spawn" if device.type == "cuda" else "fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(method, n, t, device.type, reps, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise SystemExit(f"measuring {method} at n={n} failed:\n{result['error']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smaller n and T (about a minute on 2 CPU cores)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per method (0: the libraries' default)")
    args = parser.parse_args()
    # the parent only imports: no torch thread pool and no CUDA call before the forks
    device = torch.device(args.device)
    if args.quick:
        sizes, t = [1_000, 10_000, 30_000], 2_000
    else:
        sizes, t = ([1_000, 10_000, 100_000, 1_000_000] if device.type == "cuda" else [1_000, 10_000, 100_000]), 10_000
    print(f"device: {device.type}, D={D}, T={t} queries; float16 bank on CUDA, float32 on CPU; "
          f"threads: {args.threads or 'default'}")
    print("peak extra MB: " + ("GPU: torch.cuda.max_memory_allocated delta (con2lib); CPU baselines: "
                               if device.type == "cuda" else "") + "peak RSS during the call - RSS before it")
    print(f"{'n':>9} | {'S_NND s':>8} {'sklearn s':>9} {'x':>5} {'%peak':>5} {'MB':>6} {'skl MB':>7} | "
          f"{'S_LH s':>7} {'scipy s':>8} {'x':>5} {'MB':>6} {'scipy MB':>8} | max |diff|")
    last = {}
    for n in sizes:
        reps = 2 if args.quick or n * t >= 1e9 else 3
        r = {m: measure(m, n, t, device, reps, args.threads) for m in ("nnd", "sklearn", "lh", "scipy")}
        diff_nnd = float(np.abs(r["nnd"]["scores"] - r["sklearn"]["scores"]).max())
        diff_lh = float(np.abs(r["lh"]["scores"] - r["scipy"]["scores"]).max() / np.abs(r["scipy"]["scores"]).max())
        fraction = 2 * n * t * D / r["nnd"]["seconds"] / r["nnd"]["peak"]
        speed_nnd = r["sklearn"]["seconds"] / r["nnd"]["seconds"]
        sec = {m: r[m]["seconds"] for m in r}
        mb = {m: r[m]["extra_mb"] for m in r}
        print(f"{n:>9} | {sec['nnd']:8.3f} {sec['sklearn']:9.3f} {speed_nnd:5.1f} {100 * fraction:5.0f} "
              f"{mb['nnd']:6.0f} {mb['sklearn']:7.0f} | {sec['lh']:7.3f} {sec['scipy']:8.3f} "
              f"{sec['scipy'] / sec['lh']:5.1f} {mb['lh']:6.0f} {mb['scipy']:8.0f} | "
              f"nnd {diff_nnd:.1e}, lh {diff_lh:.1e} rel", flush=True)
        cpu_fraction = 2 * n * t * D / r["nnd"]["cpu_seconds"] / r["nnd"]["cpu_peak"]
        last = {"x": speed_nnd, "f": fraction, "mb": r["nnd"]["extra_mb"], "peak": r["nnd"]["peak"],
                "cpu_f": cpu_fraction}
    print(f"device: {device_name(device)}; matmul peak in the S_NND process at the largest n "
          f"({'float16' if device.type == 'cuda' else 'float32'}): {last['peak'] / 1e9:.0f} GFLOP/s")
    if device.type == "cpu":
        print(f"S_NND fraction of peak by CPU time (FLOPs per CPU-second used, both measured the same way; "
              f"not lowered by other processes' load): {last['cpu_f']:.2f}")
    print(f"nnd_vs_sklearn={last['x']:.2f} nnd_matmul_peak_fraction={last['f']:.2f} nnd_peak_extra_mb={last['mb']:.0f}")


if __name__ == "__main__":
    main()
