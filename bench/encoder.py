"""Encoder runtime benchmark: torch eager vs ONNX Runtime, OpenVINO and int8, ViT-B-32.

    python bench/encoder.py                  # one command; prints the tables (~3 minutes)
    python bench/encoder.py --profile        # adds where the image graph spends its time
    python bench/encoder.py --isa avx2       # as on a CPU without AVX-512 (see ISA_LIMITS)

The model is open_clip's ViT-B-32 with random weights (speed does not depend on the values),
saved as a checkpoint and loaded through ``load_encoder`` like any local model. Checkpoint and
exports are kept under ``$LOOKALIKE_CACHE/bench`` so a rerun skips the one-time export.
Variants run interleaved, round after round, and each figure is the median of its rounds, so
a neighbour's load hits every variant alike; ratios are against torch in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ARCH = "ViT-B-32"
SHORT_TEXT = "a police car at night"
# auto: the int8 runtime with its per-tower fallback (a tower below cosine 0.999 runs on the next)
VARIANTS = ("torch", "onnx", "openvino", "onnx-int8", "auto")
# What limits each library to an older CPU's instructions, for the child process that measures.
# oneDNN (OpenVINO's CPU plugin and torch's) honours ONEDNN_MAX_CPU_ISA: OpenVINO's runtime
# model then names avx2 kernels (brgemm_avx2_f32, jit_gemm_I8) instead of avx512 ones; ATen
# its ATEN_CPU_CAPABILITY, MKL MKL_ENABLE_INSTRUCTIONS, OpenBLAS OPENBLAS_CORETYPE. ONNX
# Runtime's MLAS picks its kernels from CPUID with no override: its rows keep the real ISA.
# LOOKALIKE_CPU_FLAGS makes lookalike's own choices (engines, precisions) those of that CPU.
ISA_LIMITS = {
    "avx2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
        "drop": ("avx512", "avx_vnni", "amx"),
    },
    "avx512_vnni": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI",
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "OPENBLAS_CORETYPE": "SkylakeX",
        "drop": ("avx512_bf16", "avx512_fp16", "amx"),
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="images per batch in the table")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per figure")
    parser.add_argument("--text-runs", type=int, default=60, help="text calls per variant")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime op-type profile")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--isa", choices=["native", *ISA_LIMITS], default="native", help="act as an older CPU"
    )
    args = parser.parse_args()
    if args.isa != "native" and os.environ.get("LOOKALIKE_BENCH_ISA") != args.isa:
        return limited_child(args.isa)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("root", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from lookalike.encoders import load_encoder
    from lookalike.encoders.cache import cache_root
    from lookalike.encoders.probe import physical_cores

    workdir = args.workdir or cache_root() / "bench"
    os.environ.setdefault("LOOKALIKE_CACHE", str(workdir / "cache"))
    threads = args.threads or physical_cores()
    weights = checkpoint(workdir)
    print(
        f"# {cpu_model()}, {os.cpu_count()} logical CPUs, threads={threads}, "
        f"load average before {load()}"
    )
    from lookalike.encoders.probe import cpu_flags

    vector_flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    print(f"# --isa {args.isa}: CPU flags seen by lookalike: {' '.join(vector_flags)}")
    if args.isa != "native":
        limits = [f"{k}={os.environ.get(k)}" for k in ISA_LIMITS[args.isa] if k != "drop"]
        print(f"# limits: {' '.join(limits)}; ONNX Runtime's own kernels keep the real ISA")

    encoders: dict[str, Any] = {}
    for variant in VARIANTS:
        started = time.perf_counter()
        encoders[variant] = load_encoder(f"open_clip:{ARCH}", weights, "cpu", variant, threads)
        encoders[variant].encode_texts(["warm up"])
        encoders[variant].encode_images(np.zeros((1, 224, 224, 3), np.uint8))
        print(f"# {variant}: loaded (and exported if new) in {time.perf_counter() - started:.1f} s")
    engine = encoders["auto"].engine
    other = load_encoder(f"open_clip:{ARCH}", weights, "cpu", "auto", threads)
    other.engine = "openvino" if engine == "onnxruntime" else "onnxruntime"  # the other one
    other.encode_texts(["warm up"])
    other.encode_images(np.zeros((1, 224, 224, 3), np.uint8))
    encoders[f"int8/{other.engine}"] = other
    for name, encoder in (("auto", encoders["auto"]), (f"int8/{other.engine}", other)):
        image, text = encoder.agreement("image"), encoder.agreement("text")
        print(f"# {name}: int8 on {encoder.engine}, checked cosine image {image:.6f}, ", end="")
        print(f"text {text:.6f} (a tower below 0.999 runs on the next runtime)")
    macs = image_macs(encoders["torch"].model.visual)

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (args.batch, 224, 224, 3), dtype=np.uint8)
    texts = [SHORT_TEXT, "a dog", "two people riding bicycles on a rainy street in the city"]
    reference = encoders["torch"].encode_images(batch), encoders["torch"].encode_texts(texts)
    agree = {
        v: (
            least_cosine(e.encode_images(batch), reference[0]),
            least_cosine(e.encode_texts(texts), reference[1]),
        )
        for v, e in encoders.items()
    }

    image_s = interleaved(
        {v: (lambda e=e: e.encode_images(batch)) for v, e in encoders.items()}, args.rounds
    )
    text_ms, padded = text_latency(encoders, args.text_runs)

    print(f"\n## images: batch {args.batch}, {args.rounds} interleaved rounds (median)\n")
    print(
        "| runtime | images/s | x torch | GFLOP/s | text p50 ms | text p99 ms | x torch "
        "(p50) | cached text p50 ms | min cosine image | min cosine text |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v in encoders:
        rate = args.batch / image_s[v]
        p50, p99, hit = text_ms[v]
        print(
            f"| {v} | {rate:.1f} | {image_s['torch'] / image_s[v]:.2f} | "
            f"{rate * 2 * macs / 1e9:.0f} | {p50:.2f} | {p99:.2f} | "
            f"{text_ms['torch'][0] / p50:.2f} | {hit:.3f} | {agree[v][0]:.6f} | "
            f"{agree[v][1]:.6f} |"
        )

    print(
        f"\ntorch text padded to the full context (before trimming): p50 {padded[0]:.2f} ms, "
        f"p99 {padded[1]:.2f} ms"
    )
    if args.sweep:
        sweep(encoders, weights, batch, args.rounds, threads)
    if args.profile:
        profile(encoders, batch)
    print(f"\n# load average after {load()}; python {platform.python_version()}, {versions()}")


def limited_child(isa: str) -> int:
    """This benchmark again in a child process limited to ``isa`` (see ISA_LIMITS)."""
    import subprocess

    from lookalike.encoders.probe import CPU_FLAGS_ENV, cpu_flags

    limits = dict(ISA_LIMITS[isa])
    drop = limits.pop("drop")
    env = {**os.environ, **limits, "LOOKALIKE_BENCH_ISA": isa}
    env["DNNL_MAX_CPU_ISA"] = limits["ONEDNN_MAX_CPU_ISA"]
    env[CPU_FLAGS_ENV] = " ".join(sorted(f for f in cpu_flags() if not f.startswith(drop)))
    return subprocess.run([sys.executable, *sys.argv], env=env).returncode


def interleaved(calls: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median seconds per call, the calls taking turns each round (after one warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def text_latency(
    encoders: dict[str, Any], runs: int
) -> tuple[dict[str, tuple[float, float, float]], tuple[float, float]]:
    """Milliseconds of ``encode_texts([SHORT_TEXT])``: (p50, p99, cached-hit p50) per variant,
    and (p50, p99) of torch fed all 77 positions as before trimming.

    Calls run in blocks of back-to-back calls (threads stay warm, as under steady query
    load), the variants' blocks taking turns over 4 rounds.
    """
    import torch

    torch_encoder = encoders["torch"]

    def padded() -> None:
        with torch.inference_mode():
            tokens = torch_encoder.tokenizer([SHORT_TEXT])
            torch.nn.functional.normalize(torch_encoder.model.encode_text(tokens), dim=-1).numpy()

    calls = {v: (lambda e=e: e.encode_texts([SHORT_TEXT])) for v, e in encoders.items()}
    calls["padded"] = padded
    samples: dict[str, list[float]] = {v: [] for v in calls}
    for encoder in encoders.values():
        encoder.text_cache.size = 0  # every call runs the model
    for _ in range(4):
        for variant, call in calls.items():
            call()
            for _ in range(max(1, runs // 4)):
                started = time.perf_counter()
                call()
                samples[variant].append(time.perf_counter() - started)
    result = {}
    for variant, encoder in encoders.items():
        encoder.text_cache.size = 1024
        encoder.encode_texts([SHORT_TEXT])
        hits = []
        for _ in range(200):
            started = time.perf_counter()
            encoder.encode_texts([SHORT_TEXT])
            hits.append(time.perf_counter() - started)
        result[variant] = (*_percentiles(samples[variant]), float(np.median(hits) * 1e3))
    return result, _percentiles(samples["padded"])


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def sweep(
    encoders: dict[str, Any], weights: Path, batch: np.ndarray, rounds: int, threads: int
) -> None:
    """images/s by batch size and by thread count, each against torch in the same rounds."""
    from lookalike.encoders import load_encoder

    print("\n## batch size (images/s; threads as above)\n")
    sizes = (1, 8, 32)
    print("| batch | " + " | ".join(encoders) + " |")
    print("|---|" + "---|" * len(encoders))
    rng = np.random.default_rng(1)
    for size in sizes:
        data = rng.integers(0, 256, (size, 224, 224, 3), dtype=np.uint8)
        secs = interleaved(
            {v: (lambda e=e, d=data: e.encode_images(d)) for v, e in encoders.items()},
            max(2, rounds - 2),
        )
        print(f"| {size} | " + " | ".join(f"{size / secs[v]:.1f}" for v in encoders) + " |")

    if threads <= 1:
        return
    import torch

    print(f"\n## threads (images/s, batch {len(batch)})\n")
    print("| threads | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    fewer = max(1, threads // 2)
    others = {v: load_encoder(f"open_clip:{ARCH}", weights, "cpu", v, fewer) for v in VARIANTS[1:]}
    calls: dict[str, Any] = {}
    for v in VARIANTS:
        calls[f"{v}@{threads}"] = lambda e=encoders[v], n=threads: _with_torch_threads(
            n, lambda: e.encode_images(batch)
        )
        other = others.get(v, encoders[v])
        calls[f"{v}@{fewer}"] = lambda e=other, n=fewer: _with_torch_threads(
            n, lambda: e.encode_images(batch)
        )
    secs = interleaved(calls, max(2, rounds - 2))
    for n in (threads, fewer):
        print(
            f"| {n} | "
            + " | ".join(f"{len(batch) / secs[f'{v}@{n}']:.1f}" for v in VARIANTS)
            + " |"
        )
    torch.set_num_threads(threads)


def _with_torch_threads(n: int, call: Any) -> Any:
    import torch

    torch.set_num_threads(n)  # only the torch variant reads it
    return call()


def profile(encoders: dict[str, Any], batch: np.ndarray) -> None:
    """Share of the image graph's time by operator type, from ONNX Runtime's profiler."""
    import onnxruntime as ort

    print(f"\n## where the image graph's time goes (ONNX Runtime profile, batch {len(batch)})\n")
    for variant in VARIANTS[1:]:
        encoder = encoders[variant]
        options = ort.SessionOptions()
        options.intra_op_num_threads = encoder.threads or 0
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(os.environ["LOOKALIKE_CACHE"]) / f"prof-{variant}")
        session = ort.InferenceSession(
            str(encoder.graph_path("image")), options, providers=["CPUExecutionProvider"]
        )
        for _ in range(3):
            session.run(None, {"pixels": batch})
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text(encoding="utf-8"))
        trace.unlink()
        by_op: Counter[str] = Counter()
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                by_op[event["args"]["op_name"]] += event["dur"]
        total = sum(by_op.values())
        top = ", ".join(f"{op} {100 * us / total:.0f}%" for op, us in by_op.most_common(7))
        print(f"- {variant}: {top}")


def image_macs(visual: Any) -> int:
    """Multiply-accumulates of one 224x224 image through the image tower (linear + conv)."""
    import torch

    total = 0

    def linear(module: Any, inputs: Any, output: Any) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    def conv(module: Any, inputs: Any, output: Any) -> None:
        nonlocal total
        per_output = module.in_channels // module.groups * int(np.prod(module.kernel_size))
        total += output.numel() * per_output

    hooks = [
        m.register_forward_hook(linear if isinstance(m, torch.nn.Linear) else conv)
        for m in visual.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    with torch.inference_mode():
        visual(torch.zeros(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    # attention's two matmuls per layer are not modules: tokens^2 * width each
    blocks = visual.transformer.resblocks
    tokens = (224 // visual.patch_size[0]) ** 2 + 1
    total += len(blocks) * 2 * tokens * tokens * visual.transformer.width
    # nn.MultiheadAttention runs its in/out projections with F.linear, past the hooks
    total += len(blocks) * tokens * 4 * visual.transformer.width**2
    return total


def checkpoint(workdir: Path) -> Path:
    """A random-weight ViT-B-32 checkpoint, made once."""
    path = workdir / f"{ARCH}-random.pt"
    if not path.exists():
        import open_clip
        import torch

        workdir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        logging.getLogger().setLevel(logging.ERROR)
        model = open_clip.create_model(ARCH)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return path


def least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def versions() -> str:
    import onnxruntime
    import torch

    return f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"


if __name__ == "__main__":
    sys.exit(main())
