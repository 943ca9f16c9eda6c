"""Memory and time of one attention forward+backward against the token count.

    python src/bench_attention.py                      # 256, 1024, 4096 tokens, auto device
    python src/bench_attention.py --tokens 256 1024 --device cpu

Each (variant, N) runs in a fresh process. Peak memory is the most tensor memory allocated
during one forward+backward above what was allocated before it, after warm-up passes: CUDA's
allocator statistics, or on the CPU the profiler's allocation events; the same measure on
every device, so the curves compare.
Time is the median of several forward+backward passes after three warm-up passes, also reported as a
ratio to SDPA softmax at the same N, measured the same way in the same run. Writes
results/attention/<device>.{csv,md,png}.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from vitsweep.config import CONF_DIR, compose_config, options
from vitsweep.device import resolve_device
from vitsweep.files import slug
from vitsweep.measure import peak_rise_mb

ROOT = Path(__file__).resolve().parents[1]


def variants(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """Every option of conf/attention, and softmax with its N x N matrix written out."""
    found = {name: [f"attention={name}"] for name in options("attention", conf_dir)}
    if "softmax" in found:
        found["softmax (explicit)"] = ["attention=softmax", "model.attention.impl=explicit"]
    return found


def build_attention(variant: str, dim: int, heads: int, tokens: int, conf_dir: Path = CONF_DIR):
    """The attention as training builds it: from its conf/attention YAML, defaults and all."""
    cfg = compose_config(variants(conf_dir)[variant], conf_dir)
    factory = instantiate(cfg.model.attention)
    return factory(dim=dim, heads=heads, num_tokens=tokens, nanovit_quirks=False)


def measure(
    variant: str,
    tokens: int,
    batch: int,
    dim: int,
    heads: int,
    repeats: int,
    device: str,
    conf_dir: Path = CONF_DIR,
) -> dict[str, float]:
    """One variant at one N, in this (fresh) process: peak MB and seconds per fwd+bwd."""
    torch.manual_seed(0)
    dev = torch.device(device)
    attention = build_attention(variant, dim, heads, tokens, conf_dir).to(dev)
    x = torch.randn(batch, tokens, dim, device=dev, requires_grad=True)

    def step() -> None:
        attention(x).sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: kernels chosen, thread pools and caches up
        step()
    peak_mb = peak_rise_mb(dev, step)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"peak_mb": max(peak_mb, 0.0), "seconds": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "attention")
    parser.add_argument("--conf-dir", type=Path, default=CONF_DIR, help="the config tree")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    sizes = (args.batch, args.dim, args.heads, args.repeats, device, args.conf_dir)

    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), *sizes)))
        return

    import pandas as pd
    from tqdm import tqdm

    from vitsweep.device import device_label

    label = device_label(torch.device(device))
    rows = []
    names = list(variants(args.conf_dir))
    jobs = [(v, n) for n in args.tokens for v in names]
    for variant, tokens in tqdm(jobs, desc="attention bench"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            str(tokens),
            "--device",
            device,
            "--batch",
            str(args.batch),
            "--dim",
            str(args.dim),
            "--heads",
            str(args.heads),
            "--repeats",
            str(args.repeats),
            "--conf-dir",
            str(args.conf_dir),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            tqdm.write(f"{variant} at {tokens} failed: {done.stderr.strip().splitlines()[-1]}")
            rows.append({"attention": variant, "tokens": tokens, "status": "failed"})
            continue
        rows.append(
            {
                "attention": variant,
                "tokens": tokens,
                "status": "ok",
                **json.loads(done.stdout.strip().splitlines()[-1]),
            }
        )
    frame = pd.DataFrame(rows)
    reference = frame[frame["attention"] == "softmax"].set_index("tokens")["seconds"]
    frame["time_vs_sdpa"] = frame["seconds"] / frame["tokens"].map(reference)
    write_results(frame, label, names, args)


def write_results(frame, label: str, names: list[str], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / slug(label)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    table = frame.pivot(index="attention", columns="tokens", values=["seconds", "peak_mb"])
    table = table.reindex(names)
    lines = [
        f"# Attention forward+backward vs tokens — {label}",
        "",
        f"batch {args.batch}, dim {args.dim}, {args.heads} heads, fp32, median of "
        f"{args.repeats}; peak MB = the most tensor memory allocated during one forward+backward "
        "above what was allocated before it (CUDA allocator / CPU profiler allocation events).",
        "",
        "| attention | "
        + " | ".join(f"ms @ {n}" for n in args.tokens)
        + " | "
        + " | ".join(f"MB @ {n}" for n in args.tokens)
        + " |",
        "|---|" + "---:|" * (2 * len(args.tokens)),
    ]
    for name, row in table.iterrows():
        ms = [f"{row[('seconds', n)] * 1e3:.1f}" for n in args.tokens]
        mb = [f"{row[('peak_mb', n)]:.0f}" for n in args.tokens]
        lines.append(f"| {name} | " + " | ".join(ms + mb) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, group in frame.groupby("attention", sort=False):
        axes[0].plot(group["tokens"], group["seconds"] * 1e3, marker="o", label=name)
        axes[1].plot(group["tokens"], group["peak_mb"].clip(lower=1), marker="o", label=name)
    for ax, ylabel in zip(axes, ("ms per forward+backward", "peak MB")):
        ax.set(xscale="log", yscale="log", xlabel="tokens N", ylabel=ylabel)
        ax.set_xticks(args.tokens, [str(n) for n in args.tokens])
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Attention cost vs tokens — {label}")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
