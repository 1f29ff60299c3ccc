"""GPU vs CPU: training speed, sampling latency and throughput, and a saved amortizer's portability.

Run: ``python benchmarks/gpu.py [--devices cpu,cuda] [--networks nsf,coupling] [--steps 1500]
[--datasets 1000] [--draws 1000] [--threads N] [--out gpu.md]``.

Model: the non-centered hierarchical 8-schools-like model of ``benchmarks/amortization.py``,
8 groups x 10 observations (10 parameters: mu, tau, z[8]). For every inference network and
every device (``cuda`` is skipped, with a message, where ``torch.cuda.is_available()`` is
False), pymc-abi is trained online with the same seed, so CPU and GPU runs see the same
simulations and the same initial weights:

* training: wall time of ``abi.fit`` (building the amortizer included: simulator compile and
  4,096 pilot simulations), steps/s of the training loop itself (``history.seconds``), and
  the final and best validation loss, to see that GPU training learns as well as CPU;
* latency: 1 dataset x ``draws`` draws, median of ``repeats`` calls after one warm-up;
* throughput: ``datasets`` datasets x ``draws`` draws in one ``amortizer.sample`` call
  (InferenceData built for each), and the same through ``sample_unconstrained`` (the flow
  alone, no InferenceData);
* portability, once per network: the amortizer trained on ``cuda`` (on ``cpu`` where there
  is no GPU) is saved, loaded with ``device="cpu"``, and ``log_prob`` of the same draws must
  agree between the original and the copy (|diff| <= 1e-4 + 1e-5 |log_prob|): PASS / FAIL.

Simulations always run on the CPU (PyTensor); on a GPU, training steps/s includes them. CPU
rows use ``torch.get_num_threads()`` threads (all cores by default; printed). The report is
printed and, with ``--out PATH``, written to a file (rewritten after every configuration, so
a run cut short still leaves what it measured).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import torch

# the model of the amortization benchmark (the script beside this one)
from amortization import GROUPS, PER_GROUP, build_model
from pytensor.compile.mode import Mode

import pymc_abi as abi

PORTABILITY_ATOL, PORTABILITY_RTOL = 1e-4, 1e-5


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def warm_up_cuda() -> float:
    """Create the CUDA context and load cuBLAS before anything is timed."""
    start = time.perf_counter()
    x = torch.randn(256, 128, device="cuda", requires_grad=True)
    w = torch.randn(128, 128, device="cuda")
    (x @ w).relu().sum().backward()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def check_pytensor_c() -> str:
    """Compile a tiny PyTensor function in C; if that fails, fall back to Python code.

    A machine without Python's headers or ``libpython`` to link against fails every C
    compilation; PyTensor's Python implementations are slower but give the same results.
    """
    if not pytensor.config.cxx:
        return "no C++ compiler: PyTensor runs its Python implementations"
    x = pt.dvector("x")
    start = time.perf_counter()
    try:
        fn = pytensor.function([x], pt.exp(x) * 2 + 1, mode=Mode(linker="cvm"))
        fn(np.ones(3))
    except Exception as err:
        pytensor.config.cxx = ""
        pytensor.config.linker = "vm"
        first = str(err).strip().splitlines()[:1]
        return (
            f"C compilation FAILED ({type(err).__name__}: {first[0][:150] if first else ''}); "
            "falling back to PyTensor's Python implementations (slower simulations)"
        )
    return f"C compilation works ({pytensor.config.cxx}, {time.perf_counter() - start:.1f} s)"


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


class Report:
    """Lines printed as they come and kept to be written to ``--out``."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def write(self, extra: list[str] | None = None) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join([*self.lines, *(extra or [])]) + "\n")


def run_config(model, network: str, device: str, datasets, sims, args) -> tuple[dict, object]:
    """Train one (network, device) and time its sampling; returns the row and the amortizer."""
    row: dict = {"network": network, "device": device}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    amortizer, t_train = timed(
        lambda: abi.fit(
            model,
            steps=args.steps,
            batch_size=args.batch_size,
            inference_network=network,
            device=device,
            random_seed=1,
            progressbar=False,
            patience=None,
        ),
        device,
    )
    history = amortizer.history
    steps = history.step[-1] if history.step else 0
    row.update(
        train_s=t_train,
        steps=steps,
        loop_s=history.seconds,
        steps_per_s=steps / history.seconds if history.seconds else None,
        val_final=history.val_loss[-1] if history.val_loss else None,
        val_best=min(history.val_loss) if history.val_loss else None,
        skipped=history.skipped,
        net_device=str(next(amortizer.net.parameters()).device),
    )
    print(
        f"#   trained in {t_train:.1f} s ({fmt(row['steps_per_s'], '.0f')} steps/s in the loop), "
        f"val loss {fmt(row['val_final'], '.4f')}; weights on {row['net_device']}",
        flush=True,
    )

    y = datasets[0]["y"]
    amortizer.sample(
        {"y": y}, draws=args.draws, importance_sampling=False, random_seed=0
    )  # warm-up
    single = []
    for r in range(args.repeats):
        _, t = timed(
            lambda: amortizer.sample(
                {"y": y}, draws=args.draws, importance_sampling=False, random_seed=r
            ),
            device,
        )
        single.append(t)
    row["latency_ms"] = statistics.median(single) * 1e3
    row["latency_all"] = single

    many, t_many = timed(
        lambda: amortizer.sample(
            datasets, draws=args.draws, importance_sampling=False, random_seed=11
        ),
        device,
    )
    row["many_s"] = t_many
    assert len(many) == len(datasets)
    del many
    (z, _), t_raw = timed(
        lambda: amortizer.sample_unconstrained(
            {"y": sims["y"][: len(datasets)]}, draws=args.draws, random_seed=12
        ),
        device,
    )
    row["raw_s"] = t_raw
    row["finite"] = bool(np.isfinite(z).all())
    if device == "cuda":
        row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(
        f"#   1 x {args.draws}: {row['latency_ms']:.1f} ms (median of {args.repeats}); "
        f"{len(datasets)} x {args.draws}: {t_many:.2f} s, flow only {t_raw:.2f} s",
        flush=True,
    )
    return row, amortizer


def portability(model, amortizer, y, draws: int) -> tuple[bool, str]:
    """Save, load on the CPU, and compare log_prob of the same draws."""
    idata = amortizer.sample({"y": y}, draws=draws, importance_sampling=False, random_seed=5)
    lp_orig = amortizer.log_prob(idata, {"y": y})
    flow_lp = idata.sample_stats["flow_log_prob"].values
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "amortizer.pt"
        amortizer.save(path)
        copy = abi.Amortizer.load(path, model=model, device="cpu")
    devices = {p.device.type for p in copy.net.parameters()} | {
        b.device.type for b in copy.net.buffers()
    }
    lp_copy = copy.log_prob(idata, {"y": y})
    diff = np.abs(lp_copy - lp_orig)
    ok = (
        devices == {"cpu"}
        and copy.device.type == "cpu"
        and lp_orig.shape == lp_copy.shape
        and bool(np.all(np.isfinite(lp_orig)))
        and bool(np.all(diff <= PORTABILITY_ATOL + PORTABILITY_RTOL * np.abs(lp_orig)))
    )
    # the same draws from the copy: sampling on the CPU works and looks like the original
    other = copy.sample({"y": y}, draws=draws, importance_sampling=False, random_seed=5).posterior
    means = (
        f"posterior mean mu {float(idata.posterior['mu'].mean()):.3f} (original) vs "
        f"{float(other['mu'].mean()):.3f} (cpu copy), tau "
        f"{float(idata.posterior['tau'].mean()):.3f} vs {float(other['tau'].mean()):.3f}"
    )
    detail = (
        f"{amortizer.device} -> save -> load(device='cpu'): copy on {sorted(devices)}; "
        f"log_prob of {diff.size} draws: max |diff| {diff.max():.2e}, "
        f"max |log_prob| {np.abs(lp_orig).max():.1f}; "
        f"log_prob vs sample's flow_log_prob on {amortizer.device}: max |diff| "
        f"{np.abs(lp_orig - flow_lp).max():.2e}; {means}"
    )
    return ok, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated: cpu, cuda")
    parser.add_argument("--networks", default="nsf,coupling", help="comma-separated networks")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (online)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--datasets", type=int, default=1000, help="datasets in the big call")
    parser.add_argument("--draws", type=int, default=1000, help="posterior draws per dataset")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the 1-dataset timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("pymc", "pytensor", "pymc_abi"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=FutureWarning)

    report = Report(args.out)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    skipped_devices = []
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
        skipped_devices.append("cuda")
        print("# cuda: SKIPPED, torch.cuda.is_available() is False", flush=True)

    report("# pymc-abi on GPU vs CPU")
    report()
    report(
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {np.__version__}, pymc {pm.__version__}, pymc-abi {abi.__version__}"
    )
    report(
        f"- CPU: {os.cpu_count()} logical cores, torch.get_num_threads() = "
        f"{torch.get_num_threads()} (used by the cpu rows"
        + (", set by --threads)" if args.threads else ", torch's default)")
    )
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        report(
            f"- CUDA {torch.version.cuda}: {', '.join(names)}; "
            f"float32 matmul precision {torch.get_float32_matmul_precision()!r}"
        )
    else:
        report("- CUDA: not available (torch.cuda.is_available() is False)")
    if skipped_devices:
        report(f"- skipped devices: {', '.join(skipped_devices)} (no GPU)")
    report(
        f"- model: non-centered 8 schools, {GROUPS} x {PER_GROUP} observations, 10 parameters; "
        f"{args.steps} online steps of batch {args.batch_size}, random_seed=1, patience=None"
    )
    report(f"- PyTensor {pytensor.__version__}: {check_pytensor_c()}")
    if "cuda" in devices:
        report(f"- CUDA warm-up (context, cuBLAS), not timed below: {warm_up_cuda():.1f} s")
    report()
    report.write()

    model = build_model()
    t0 = time.perf_counter()
    sims = abi.ModelSimulator(model).sample(args.datasets, random_seed=0)
    datasets = [{"y": sims["y"][i]} for i in range(args.datasets)]
    print(
        f"# {args.datasets} prior datasets simulated in {time.perf_counter() - t0:.1f} s "
        "(PyTensor compile included)",
        flush=True,
    )

    rows: list[dict] = []
    checks: list[str] = []
    failures = 0
    for network in networks:
        for_portability = None
        for device in devices:
            print(f"# {network} on {device}", flush=True)
            try:
                row, amortizer = run_config(model, network, device, datasets, sims, args)
            except Exception as err:
                traceback.print_exc()
                failures += 1
                rows.append({"network": network, "device": device, "error": repr(err)[:200]})
                continue
            rows.append(row)
            if device == "cuda" or (for_portability is None and "cuda" not in devices):
                for_portability = amortizer
            else:
                del amortizer
            report.write(tables(rows, args))
        if for_portability is not None:
            try:
                ok, detail = portability(model, for_portability, datasets[0]["y"], args.draws)
            except Exception as err:
                traceback.print_exc()
                ok, detail = False, f"error: {err!r}"[:300]
            failures += not ok
            checks.append(f"- {network}: {'PASS' if ok else 'FAIL'}: {detail}")
            print(f"# portability {checks[-1]}", flush=True)
            del for_portability
        else:
            checks.append(f"- {network}: NOT RUN (no amortizer was trained for it)")
        if "cuda" in devices:
            torch.cuda.empty_cache()

    for line in tables(rows, args):
        report(line)
    report()
    report(
        "Portability (trained on one device, saved, loaded with device='cpu'; tolerance "
        f"|diff| <= {PORTABILITY_ATOL:g} + {PORTABILITY_RTOL:g} |log_prob|):"
    )
    for line in checks or ["- not run"]:
        report(line)
    report()
    report(f"Result: {'PASS' if not failures else f'{failures} FAILURE(S)'}")
    report.write()


def tables(rows: list[dict], args) -> list[str]:
    n = args.datasets
    out = [
        "",
        f"| network | device | train (s) | steps/s (loop) | val loss final | val loss best "
        f"| 1x{args.draws} (ms) | {n}x{args.draws} (s) | {n}x{args.draws} flow only (s) "
        "| peak GPU MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['network']} | {r['device']} | ERROR: {r['error']} ||||||||")
            continue
        out.append(
            f"| {r['network']} | {r['device']} | {r['train_s']:.1f} | {fmt(r['steps_per_s'], '.0f')} "
            f"| {fmt(r['val_final'], '.4f')} | {fmt(r['val_best'], '.4f')} "
            f"| {r['latency_ms']:.1f} | {r['many_s']:.2f} | {r['raw_s']:.2f} "
            f"| {fmt(r.get('peak_mib'), '.0f')} |"
        )
    by_key = {(r["network"], r["device"]): r for r in rows if "error" not in r}
    pairs = [
        (by_key[(net, "cpu")], by_key[(net, "cuda")])
        for net in dict.fromkeys(r["network"] for r in rows)
        if (net, "cpu") in by_key and (net, "cuda") in by_key
    ]
    if pairs:
        out += [
            "",
            "Speed-up of cuda over cpu (cpu time / cuda time; > 1 means the GPU is faster):",
            "",
            f"| network | train | steps/s | 1x{args.draws} | {n}x{args.draws} "
            f"| {n}x{args.draws} flow only | val loss cuda - cpu |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for cpu, gpu in pairs:
            steps_ratio = (
                gpu["steps_per_s"] / cpu["steps_per_s"]
                if gpu["steps_per_s"] and cpu["steps_per_s"]
                else None
            )
            out.append(
                f"| {cpu['network']} | {cpu['train_s'] / gpu['train_s']:.2f}x "
                f"| {fmt(steps_ratio, '.2f')}x | {cpu['latency_ms'] / gpu['latency_ms']:.2f}x "
                f"| {cpu['many_s'] / gpu['many_s']:.2f}x | {cpu['raw_s'] / gpu['raw_s']:.2f}x "
                f"| {gpu['val_final'] - cpu['val_final']:+.4f} |"
            )
    notes = [
        r
        for r in rows
        if "error" not in r and (r["skipped"] or not r["finite"] or r["steps"] != args.steps)
    ]
    if notes:
        out.append("")
    for r in notes:
        out.append(
            f"- note {r['network']}/{r['device']}: {r['steps']} steps, {r['skipped']} batches "
            f"skipped, draws finite: {r['finite']}"
        )
    out.append("")
    out.append(
        "train = abi.fit wall time (amortizer built: simulator compile, pilot simulations); "
        "steps/s over the training loop only; simulations run on the CPU on every device."
    )
    return out


if __name__ == "__main__":
    main()
