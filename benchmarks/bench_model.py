"""Benchmark of the Organ-DETR network on CPU: parameters, forward / backward time, peak memory, and the
share of time in backbone vs MSA encoder vs decoder (+ heads and loss).

    python benchmarks/bench_model.py                      # built-in "cpu" plan
    python benchmarks/bench_model.py --preset paper --repeats 1 --forward-only
    python benchmarks/bench_model.py --plans /path/to/plans.json

Each configuration runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own;
"activation peak" is that peak minus the resident memory after building the model and the input. The
child gets an address-space limit (--memory-limit-gb), so a plan too big for the machine fails with an
allocation error instead of pushing a shared machine into the OOM killer.

Times are wall-clock medians in seconds; `cpu_*` entries are the process CPU time of the same runs (all
threads), less sensitive to other load on a shared machine. Per-part times: the parts are run separately with detached, grad-requiring boundaries (backbone ->
encoder -> decoder + head + criterion), so both the forward and the backward time of each part are
measured exactly, then backward is run part by part in reverse order.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def preset_plans(name: str) -> dict[str, Any]:
    """Example plans: `cpu` (a laptop-CPU preset-like network at 64 x 96 x 96) and `paper` (Organ-DETR / Transoar
    setting: 160 x 160 x 256 input, FPN with C0 at full resolution, P2-P5 into MSA with f_e = 384, p = 2,
    64 heads, depth 2, dropout 0.3, no bias; 3-layer deformable decoder, 6 heads, 4 points; N = rho * M =
    10 * 16 queries, as Transoar's config that the paper says it kept for all methods)."""
    from autodetr.model.testing import make_test_plans

    if name == "cpu":
        plans = make_test_plans(
            num_classes=10, input_size=(64, 96, 96), hidden_dim=64, num_queries=100,
            stem_stride=(2, 2, 2), stage_strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
            stage_channels=(16, 32, 64, 128), blocks_per_stage=(1, 1, 1, 1), num_feature_levels=3,
            msa_heads=8, msa_depth=2, decoder_layers=3, decoder_heads=8, decoder_points=4, dropout=0.1, rho=10,
        )
        plans["network"]["stem_channels"] = 16
        plans["network"]["msa"]["ffn_dim"] = 256
        plans["network"]["decoder"]["ffn_dim"] = 256
        return plans
    if name == "paper":
        plans = make_test_plans(
            num_classes=16, input_size=(160, 160, 256), hidden_dim=384, num_queries=160,
            stem_stride=(1, 1, 1), stage_strides=((2, 2, 2),) * 5, stage_channels=(48, 96, 192, 384, 384),
            blocks_per_stage=(1, 1, 1, 1, 1), num_feature_levels=4, msa_heads=64, msa_depth=2,
            decoder_layers=3, decoder_heads=6, decoder_points=4, dropout=0.3, rho=10,
        )
        plans["network"]["stem_channels"] = 24
        plans["network"]["msa"].update(ffn_dim=1024, dropout=0.3, bias=False)
        plans["network"]["decoder"].update(ffn_dim=1024, dropout=0.1)
        return plans
    raise ValueError(f"unknown preset {name!r}")


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(plans: dict[str, Any], args: dict[str, Any], queue) -> None:
    try:
        limit = int(args["memory_limit_gb"] * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        import torch

        from autodetr.losses import SetCriterion, make_targets
        from autodetr.model import build_model
        from autodetr.model.organ_detr import level_scales

        torch.set_num_threads(args["threads"])
        torch.manual_seed(0)
        model = build_model(plans).train()
        criterion = SetCriterion(plans, matcher="dqm")
        shape = [int(s) for s in plans["input_size"]]
        images = torch.randn(args["batch"], 1, *shape)
        seg = torch.zeros(args["batch"], *shape, dtype=torch.long)
        num_classes = len(plans["classes"])
        boxes, classes = [], []
        for sample in range(args["batch"]):
            sample_boxes = []
            for c in range(num_classes):
                low = [int(n * (0.1 + 0.6 * ((c * 0.37 + a * 0.21) % 1))) for a, n in enumerate(shape)]
                high = [min(n, lo + max(1, n // 6)) for lo, n in zip(low, shape)]
                seg[sample, low[0]:high[0], low[1]:high[1], low[2]:high[2]] = c + 1
                sample_boxes.append(low + high)
            boxes.append(sample_boxes)
            classes.append(list(range(1, num_classes + 1)))
        targets = make_targets(boxes, classes, shape)
        baseline = _rss_mb()
        result: dict[str, Any] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "parameters_by_part": {
                name: sum(p.numel() for p in getattr(model, name).parameters())
                for name in ("backbone", "encoder", "segmentation_head", "decoder", "head")
            },
            "rss_after_build_mb": round(baseline, 1),
        }
        times: dict[str, list[float]] = {k: [] for k in ("forward", "backward", "fwd_backbone", "fwd_msa", "fwd_decoder_head_loss", "bwd_backbone", "bwd_msa", "bwd_decoder_head_loss", "fwd_inference", "inf_backbone", "inf_msa", "inf_decoder_head", "cpu_forward", "cpu_backward", "cpu_fwd_inference")}
        total_runs = args["warmup"] + args["repeats"]
        for run in range(total_runs):
            record = run >= args["warmup"]
            model.zero_grad(set_to_none=True)
            if not args["forward_only"]:
                # whole model, as training runs it
                start, cpu_start = time.perf_counter(), time.process_time()
                outputs = model(images)
                loss, _ = criterion(outputs, targets, seg)
                middle, cpu_middle = time.perf_counter(), time.process_time()
                loss.backward()
                end, cpu_end = time.perf_counter(), time.process_time()
                del outputs, loss
                # the same, part by part
                model.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                features = model.backbone(images)
                t1 = time.perf_counter()
                features_in = [f.detach().requires_grad_(True) for f in features]
                encoded = model.encoder(features_in, model.backbone.strides, shape)
                t2 = time.perf_counter()
                encoded_in = [e.detach().requires_grad_(True) for e in encoded]

                scales = level_scales(shape, [tuple(e.shape[2:]) for e in encoded_in], model.backbone.strides)
                decoded = model.decoder(encoded_in, scales)
                outputs = dict(model.head(decoded.features, decoded.reference_boxes, decoded.refined_boxes))
                outputs["seg_logits"] = model.segmentation_head(encoded_in)
                loss, _ = criterion(outputs, targets, seg)
                t3 = time.perf_counter()
                loss.backward()
                t4 = time.perf_counter()
                torch.autograd.backward(encoded, [e.grad for e in encoded_in])
                t5 = time.perf_counter()
                torch.autograd.backward(features, [f.grad for f in features_in])
                t6 = time.perf_counter()
                del features, features_in, encoded, encoded_in, decoded, outputs, loss
                if record:
                    times["forward"].append(middle - start)
                    times["backward"].append(end - middle)
                    times["cpu_forward"].append(cpu_middle - cpu_start)
                    times["cpu_backward"].append(cpu_end - cpu_middle)
                    times["fwd_backbone"].append(t1 - t0)
                    times["fwd_msa"].append(t2 - t1)
                    times["fwd_decoder_head_loss"].append(t3 - t2)
                    times["bwd_decoder_head_loss"].append(t4 - t3)
                    times["bwd_msa"].append(t5 - t4)
                    times["bwd_backbone"].append(t6 - t5)
            model.eval()
            with torch.no_grad():
                start, cpu_start = time.perf_counter(), time.process_time()
                model(images)
                if record:
                    times["fwd_inference"].append(time.perf_counter() - start)
                    times["cpu_fwd_inference"].append(time.process_time() - cpu_start)
                if args["forward_only"]:  # inference forward, part by part

                    t0 = time.perf_counter()
                    features = model.backbone(images)
                    t1 = time.perf_counter()
                    encoded = model.encoder(features, model.backbone.strides, shape)
                    t2 = time.perf_counter()
                    scales = level_scales(shape, [tuple(e.shape[2:]) for e in encoded], model.backbone.strides)
                    decoded = model.decoder(encoded, scales)
                    model.head(decoded.features, decoded.reference_boxes, decoded.refined_boxes)
                    t3 = time.perf_counter()
                    del features, encoded, decoded
                    if record:
                        times["inf_backbone"].append(t1 - t0)
                        times["inf_msa"].append(t2 - t1)
                        times["inf_decoder_head"].append(t3 - t2)
            model.train()
        result["seconds_median"] = {k: round(sorted(v)[len(v) // 2], 4) for k, v in times.items() if v}
        if args["forward_only"]:
            parts = {k: result["seconds_median"][f"inf_{k}"] for k in ("backbone", "msa", "decoder_head")}
            result["share_of_inference_forward"] = {k: round(v / sum(parts.values()), 3) for k, v in parts.items()}
        else:
            parts = {k: result["seconds_median"][f"fwd_{k}"] + result["seconds_median"][f"bwd_{k}"] for k in ("backbone", "msa", "decoder_head_loss")}
            total = sum(parts.values())
            result["share_of_train_step"] = {k: round(v / total, 3) for k, v in parts.items()}
        result["peak_rss_mb"] = round(_peak_mb(), 1)
        result["activation_peak_mb"] = round(_peak_mb() - baseline, 1)
        queue.put(result)
    except BaseException as error:  # noqa: BLE001 - report any failure (MemoryError included) to the parent
        queue.put({"error": f"{type(error).__name__}: {error}"})


def run_benchmark(plans: dict[str, Any], **args: Any) -> dict[str, Any]:
    """Run one configuration in a fresh process and return its measurements."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(plans, args, queue))
    process.start()
    process.join()
    return queue.get() if not queue.empty() else {"error": f"child exited with code {process.exitcode}"}


def describe(plans: dict[str, Any]) -> dict[str, Any]:
    from autodetr.model.backbone import feature_level_shapes

    network = plans["network"]
    return {
        "input_size": plans["input_size"], "backbone": network["backbone"], "hidden_dim": network["hidden_dim"],
        "msa_levels": [list(s) for s in feature_level_shapes(plans)], "msa": network["msa"],
        "decoder": network["decoder"], "num_queries": network["num_queries"], "classes": len(plans["classes"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", help="plans.json to benchmark (default: the built-in preset)")
    parser.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--backbone", choices=["fpn", "resnet50", "resnet101"], help="override the plan's backbone")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("D", "H", "W"), help="override plans['input_size']")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forward-only", action="store_true", help="only time inference (no_grad) forward")
    parser.add_argument("--memory-limit-gb", type=float, default=12.0)
    parser.add_argument("--output", help="write the result as JSON here")
    args = parser.parse_args()
    if args.plans:
        with open(args.plans) as handle:
            plans = json.load(handle)
    else:
        plans = preset_plans(args.preset)
    if args.backbone:
        plans["network"]["backbone"] = args.backbone
    if args.input_size:
        plans["input_size"] = list(args.input_size)
    result = {"plan": describe(plans)}
    result.update(run_benchmark(
        plans, batch=args.batch, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
        forward_only=args.forward_only, memory_limit_gb=args.memory_limit_gb,
    ))
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
