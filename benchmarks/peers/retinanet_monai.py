"""MONAI's 3D RetinaNet (`monai.apps.detection`), the peer of `benchmarks/bench_vs_retinanet.py`: trained on
autodetr's preprocessed training arrays and run on the held-out cases preprocessed the same way.

Runs in the peer's own virtual environment (`benchmarks/peers/setup_retinanet.sh`: torch, torchvision and
MONAI pinned in `requirements-retinanet.txt`), never in autodetr's: MONAI's detection needs torchvision, which
does not import beside the project's CPU build of torch. Reads the npz files with numpy and imports nothing of
autodetr but `benchmarks/retinanet_peer.py`'s numpy-only helpers (box convention, anchor shapes).

    python retinanet_monai.py train --cases PLANS_FOLDER --output MODEL --minutes 20 --threads 2
    python retinanet_monai.py predict --model MODEL --cases HELD_OUT_FOLDER --output RAW --threads 2

The detector, as MONAI's detection tutorial (Project-MONAI/tutorials, detection/: LUNA16 RetinaNet) builds it,
with its settings unless said otherwise:

- backbone `monai.networks.nets.resnet.ResNet`, basic blocks, 2 per stage (ResNet-18 depth), widths 16 / 32 /
  64 / 128 instead of 64 ... 512, and a feature pyramid (`BackboneWithFPN`, the class
  `resnet_fpn_feature_extractor` returns) of 64 instead of 256 channels on stages 2 and 3 plus MONAI's extra
  max-pool level: strides 8, 16 and 32 voxels, i.e. about 40, 80 and 160 mm on the CPU plan's 4.5-5 mm grid,
  where the organs are 6 to 57 voxels long. Why: `resnet_fpn_feature_extractor` fixes the pyramid, and with it
  the 4-convolution classification and regression heads, at 256 channels; the tutorial's ResNet-50 at that width
  (21 M parameters) takes 20 s per step (batch 2, 96 x 64 x 96 voxels, one thread), about 60 steps in 20
  minutes. This one has 1.7 M parameters, like autodetr's CPU network (1.75 M); one thread measured 0.32 s per
  step for the network alone (batch 2, 96 x 64 x 96) and 0.48 s in this script's training loop on full-size
  phantoms (input 96 x 64 x 128, with augmentation), so it trains for thousands of steps in 20 minutes, as
  autodetr does. A stride-4 level (stage 1) costs three times as much per step, for organs at least 6 voxels
  long.
- anchors `AnchorGeneratorWithAnchorShape`: 3 shapes per location from k-means of the training boxes' sizes
  (`retinanet_peer.anchor_base_shapes`), scaled by 1, 2 and 4 on the three levels;
- `RetinaNetDetector` with the ATSS matcher (4 candidates per level, centres need not lie in the box), the hard
  negative sampler (64 anchors per image, 30 % positive, pool 20, at least 16 negatives), MONAI's box coder,
  binary cross-entropy and smooth-L1 box regression (its defaults), loss = classification + regression;
- SGD (learning rate 0.01, momentum 0.9, Nesterov, weight decay 3e-5) as the tutorial; a linear warm-up over
  50 steps, then a cosine decay to 1 % that follows the time budget (as autodetr's and the nnU-Net budget
  trainer's schedules do), batch size of autodetr's plan;
- augmentation from the same family and with the probabilities of autodetr's plan (`training.augmentation`),
  where MONAI offers it: the case placed at a random offset inside the padded input (`p_shift`), isotropic
  zoom (`RandZoomBoxd`, `p_scale`, `scale_range`) with the boxes clipped to the image (`ClipBoxToImaged`), gamma
  (`RandAdjustContrastd`), Gaussian noise, brightness (`RandScaleIntensityd`) and contrast
  (`RandScaleIntensityFixedMeand`). No flips: MONAI's `RandFlipBoxd` cannot swap kidney_left and kidney_right,
  and autodetr flips no other axis; no rotation: MONAI's box transforms rotate by 90 degrees only. The
  augmentation runs in the training process (autodetr's runs in worker processes).
- prediction on the whole volume (padded as in training, at the low corner), MONAI's box selector (scores
  above 0, top 1000 per level, NMS 0.22, 300 boxes); all boxes are written, `bench_vs_retinanet.py` keeps the
  highest-scored box per class.

Inputs: `<case>.npz` with `image [C, d, h, w]` (and for training `boxes [G, 6]` in autodetr's convention and
`classes [G]`, 1..C), `plans.json` in the training folder. Outputs: train -> `MODEL/model.pt`,
`config.json`, `summary.json` (steps, time, losses); predict -> `RAW/<case>.json` (`retinanet_peer.RAW_KEYS`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retinanet_peer import (  # noqa: E402
    RAW_BOX_CONVENTION,
    anchor_base_shapes,
    autodetr_to_monai,
    monai_to_autodetr,
)

NETWORK = {"block": "basic", "layers": [2, 2, 2, 2], "widths": [16, 32, 64, 128], "returned_layers": [2, 3],
           "fpn_channels": 64, "conv1_stride": 2, "conv1_size": 7, "num_anchor_shapes": 3}
OPTIMISER = {"learning_rate": 0.01, "momentum": 0.9, "weight_decay": 3e-5, "warmup_steps": 50, "final_lr_factor": 0.01}
MATCHING = {"atss_candidates": 4, "sampler_per_image": 64, "positive_fraction": 0.3, "pool_size": 20, "min_neg": 16}
SELECTION = {"score_thresh": 0.0, "topk_candidates_per_level": 1000, "nms_thresh": 0.22, "detections_per_img": 300}
BOX_KEY, LABEL_KEY = "box", "label"
LOG_EVERY = 25


# ----------------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------------

def feature_map_scales(network: dict) -> list[int]:
    """Anchor scale of each pyramid level: the returned stages plus MONAI's extra max-pool level."""
    return [2 ** level for level in range(len(network["returned_layers"]) + 1)]


def size_divisible(network: dict) -> int:
    """What every input side must divide by: the coarsest level's stride (conv1, max-pool, stages, extra level)."""
    return int(network["conv1_stride"]) * 2 * 2 ** max(network["returned_layers"])


def build_detector(config: dict) -> Any:
    """MONAI's RetinaNetDetector of `config` (`network`, `num_classes`, `anchor_shapes`), set up for training
    and inference (see the module docstring)."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
    from monai.networks.blocks.feature_pyramid_network import LastLevelMaxPool
    from monai.networks.nets import resnet

    network = config["network"]
    backbone = resnet.ResNet(block=network["block"], layers=network["layers"], block_inplanes=network["widths"],
                             spatial_dims=3, n_input_channels=int(config["in_channels"]),
                             conv1_t_size=network["conv1_size"], conv1_t_stride=network["conv1_stride"])
    returned = network["returned_layers"]
    extractor = BackboneWithFPN(backbone, {f"layer{k}": str(v) for v, k in enumerate(returned)},
                                [network["widths"][k - 1] for k in returned], network["fpn_channels"],
                                spatial_dims=3, extra_blocks=LastLevelMaxPool(3))
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=feature_map_scales(network),
                                             base_anchor_shapes=config["anchor_shapes"])
    net = RetinaNet(spatial_dims=3, num_classes=int(config["num_classes"]), num_anchors=len(config["anchor_shapes"]),
                    feature_extractor=extractor, size_divisible=size_divisible(network))
    detector = RetinaNetDetector(network=net, anchor_generator=anchors)
    detector.set_target_keys(box_key=BOX_KEY, label_key=LABEL_KEY)
    detector.set_atss_matcher(num_candidates=MATCHING["atss_candidates"], center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=MATCHING["sampler_per_image"],
                                       positive_fraction=MATCHING["positive_fraction"],
                                       pool_size=MATCHING["pool_size"], min_neg=MATCHING["min_neg"])
    detector.set_box_selector_parameters(**SELECTION)
    return detector


# ----------------------------------------------------------------------------------------------------
# data and augmentation
# ----------------------------------------------------------------------------------------------------

def load_cases(folder: Path, with_boxes: bool) -> list[dict]:
    """Every `<case>.npz` of `folder`: `image` float32 and, `with_boxes`, autodetr boxes and class indices."""
    cases = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path, allow_pickle=False) as content:
            case = {"case": path.stem, "image": content["image"].astype(np.float32)}
            if with_boxes:
                case["boxes"] = content["boxes"].astype(np.float64).reshape(-1, 6)
                case["classes"] = content["classes"].astype(np.int64).reshape(-1)
        cases.append(case)
    if not cases:
        raise FileNotFoundError(f"{folder}: no preprocessed cases (*.npz)")
    return cases


def padded_size(input_size: list[int], network: dict) -> list[int]:
    """The plan's input size rounded up to what the network divides by (the padded input of every case)."""
    divisible = size_divisible(network)
    return [int(math.ceil(int(s) / divisible) * divisible) for s in input_size]


def place(image: np.ndarray, size: list[int], offset: list[int]) -> np.ndarray:
    """`image [C, d, h, w]` inside `[C, *size]` filled with its minimum (the normalised background, as
    autodetr pads), at voxel `offset`."""
    out = np.full((image.shape[0], *size), float(image.min()), dtype=np.float32)
    region = tuple(slice(o, o + s) for o, s in zip(offset, image.shape[1:]))
    out[(slice(None),) + region] = image
    return out


def random_offset(shape: tuple[int, ...], size: list[int], p_shift: float, rng: np.random.Generator) -> list[int]:
    """With probability `p_shift` a uniform offset inside the padding of each axis (autodetr's shift), else 0."""
    if rng.random() >= p_shift:
        return [0, 0, 0]
    return [int(rng.integers(0, max(n - s, 0) + 1)) for s, n in zip(shape, size)]


def training_transform(augmentation: dict, seed: int) -> Any:
    """MONAI's transforms of the zoom and intensity augmentation, with the plan's probabilities and ranges."""
    from monai.apps.detection.transforms.dictionary import ClipBoxToImaged, RandZoomBoxd
    from monai.transforms import (Compose, RandAdjustContrastd, RandGaussianNoised, RandScaleIntensityd,
                                  RandScaleIntensityFixedMeand)

    enabled = bool(augmentation.get("enabled", True))
    p = {key: float(augmentation.get(key, 0.0)) if enabled else 0.0
         for key in ("p_scale", "p_gamma", "p_noise", "p_brightness", "p_contrast")}
    scale = augmentation.get("scale_range", [0.85, 1.15])
    brightness = augmentation.get("brightness_range", [0.75, 1.25])
    contrast = augmentation.get("contrast_range", [0.75, 1.25])
    transform = Compose([
        RandZoomBoxd(image_keys="image", box_keys=BOX_KEY, box_ref_image_keys="image", prob=p["p_scale"],
                     min_zoom=float(scale[0]), max_zoom=float(scale[1]), mode="trilinear", padding_mode="edge",
                     keep_size=True),
        ClipBoxToImaged(box_keys=BOX_KEY, label_keys=LABEL_KEY, box_ref_image_keys="image", remove_empty=True),
        RandAdjustContrastd(keys="image", prob=p["p_gamma"], gamma=tuple(augmentation.get("gamma_range", [0.7, 1.5]))),
        RandGaussianNoised(keys="image", prob=p["p_noise"],
                           std=math.sqrt(float(max(augmentation.get("noise_variance", [0.0, 0.1]))))),
        RandScaleIntensityd(keys="image", prob=p["p_brightness"],
                            factors=(float(brightness[0]) - 1.0, float(brightness[1]) - 1.0)),
        RandScaleIntensityFixedMeand(keys="image", prob=p["p_contrast"],
                                     factors=(float(contrast[0]) - 1.0, float(contrast[1]) - 1.0)),
    ])
    transform.set_random_state(seed=seed)
    return transform


def plain(value: Any) -> torch.Tensor:
    """A plain tensor (MONAI's transforms may return MetaTensors)."""
    return value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)


def training_sample(case: dict, size: list[int], augmentation: dict, transform: Any,
                    rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    """One augmented training sample: (image `[C, *size]`, MONAI target with boxes and 0-based labels)."""
    enabled = bool(augmentation.get("enabled", True))
    offset = random_offset(case["image"].shape[1:], size, float(augmentation.get("p_shift", 0.0)) if enabled else 0.0, rng)
    boxes = case["boxes"] + np.tile(np.asarray(offset, dtype=np.float64), 2)
    data = {"image": torch.from_numpy(place(case["image"], size, offset)),
            BOX_KEY: torch.from_numpy(autodetr_to_monai(boxes)),
            LABEL_KEY: torch.from_numpy(case["classes"] - 1)}
    data = transform(data)
    return plain(data["image"]).float(), {BOX_KEY: plain(data[BOX_KEY]).float(), LABEL_KEY: plain(data[LABEL_KEY]).long()}


# ----------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------

def learning_rate(step: int, time_fraction: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine to `final_lr_factor` over the time budget."""
    base, final = OPTIMISER["learning_rate"], OPTIMISER["final_lr_factor"]
    warmup = min(1.0, (step + 1) / OPTIMISER["warmup_steps"])
    cosine = final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, time_fraction)))
    return base * warmup * cosine


def training_config(cases: list[dict], plans: dict) -> dict:
    """What the model is built from and trained with, written to `config.json` (predict rebuilds from it)."""
    sizes = np.concatenate([c["boxes"][:, 3:] - c["boxes"][:, :3] for c in cases if len(c["boxes"])])
    network = dict(NETWORK)
    return {"network": network, "num_classes": len(plans["classes"]), "in_channels": int(cases[0]["image"].shape[0]),
            "anchor_shapes": anchor_base_shapes(sizes, network["num_anchor_shapes"], feature_map_scales(network)),
            "input_size": padded_size(plans["input_size"], network), "plan_input_size": list(plans["input_size"]),
            "batch_size": int(plans["training"]["batch_size"]), "optimiser": OPTIMISER, "matching": MATCHING,
            "selection": SELECTION, "augmentation": plans["training"].get("augmentation", {})}


def train_steps(detector: Any, cases: list[dict], config: dict, args: argparse.Namespace) -> dict:
    """The budgeted training loop; returns the summary (steps, time, losses)."""
    rng = np.random.default_rng(args.seed)
    transform = training_transform(config["augmentation"], args.seed)
    optimiser = torch.optim.SGD(detector.network.parameters(), lr=OPTIMISER["learning_rate"],
                                momentum=OPTIMISER["momentum"], weight_decay=OPTIMISER["weight_decay"], nesterov=True)
    budget_s, steps, losses = 60.0 * args.minutes, 0, []
    detector.train()
    start = time.monotonic()
    while time.monotonic() - start < budget_s and (args.max_steps is None or steps < args.max_steps):
        chosen = rng.integers(0, len(cases), size=config["batch_size"])
        samples = [training_sample(cases[i], config["input_size"], config["augmentation"], transform, rng) for i in chosen]
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(steps, (time.monotonic() - start) / budget_s)
        outputs = detector([s[0] for s in samples], [s[1] for s in samples])
        loss = outputs[detector.cls_key] + outputs[detector.box_reg_key]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        steps += 1
        losses.append([outputs[detector.cls_key].item(), outputs[detector.box_reg_key].item()])
        if steps % LOG_EVERY == 0:
            recent = np.mean(losses[-LOG_EVERY:], axis=0)
            print(f"step {steps}: {time.monotonic() - start:.0f} s, classification {recent[0]:.4f}, "
                  f"regression {recent[1]:.4f}", flush=True)
    seconds = time.monotonic() - start
    return {"iterations": steps, "training_seconds": round(seconds, 1),
            "iterations_per_second": round(steps / seconds, 3) if seconds > 0 else None,
            "seconds_per_iteration": round(seconds / steps, 3) if steps else None,
            "final_losses": np.mean(losses[-LOG_EVERY:], axis=0).round(5).tolist() if losses else None,
            "loss_history": [[round(v, 5) for v in pair] for pair in losses[::LOG_EVERY]]}


def train(args: argparse.Namespace) -> None:
    """Build the detector from the training cases, train it for the budget, save model, config and summary."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    plans = json.loads((Path(args.cases) / "plans.json").read_text())
    cases = load_cases(args.cases, with_boxes=True)
    config = training_config(cases, plans)
    detector = build_detector(config)
    parameters = sum(p.numel() for p in detector.network.parameters())
    print(f"{len(cases)} cases, input {config['input_size']}, anchor shapes {config['anchor_shapes']}, "
          f"{parameters / 1e6:.2f} M parameters", flush=True)
    summary = train_steps(detector, cases, config, args)
    summary.update(parameters=int(parameters), num_cases=len(cases), threads=args.threads, seed=args.seed,
                   budget_minutes=args.minutes, anchor_shapes=config["anchor_shapes"], input_size=config["input_size"])
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    torch.save(detector.network.state_dict(), output / "model.pt")
    (output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"done: {summary['iterations']} steps in {summary['training_seconds']} s", flush=True)


# ----------------------------------------------------------------------------------------------------
# prediction
# ----------------------------------------------------------------------------------------------------

def predict_case(detector: Any, case: dict, size: list[int]) -> dict:
    """The raw detections of one case: every box the selector keeps, in autodetr's convention on the case's
    preprocessed grid, clipped to it, with scores and class indices 1..C."""
    image = case["image"]
    padded = [max(int(s), int(n)) for s, n in zip(image.shape[1:], size)]
    with torch.no_grad():
        result = detector([torch.from_numpy(place(image, padded, [0, 0, 0]))], use_inferer=False)[0]
    boxes = monai_to_autodetr(plain(result[BOX_KEY]).numpy())
    shape = np.asarray(image.shape[1:], dtype=np.float64)
    boxes = np.concatenate([np.clip(boxes[:, :3], 0, shape), np.clip(boxes[:, 3:], 0, shape)], axis=1)
    return {"case": case["case"], "box_convention": RAW_BOX_CONVENTION, "image_shape": list(image.shape[1:]),
            "boxes": boxes.round(3).tolist(), "scores": plain(result[detector.pred_score_key]).numpy().round(6).tolist(),
            "classes": (plain(result[LABEL_KEY]).numpy().astype(np.int64) + 1).tolist()}


def predict(args: argparse.Namespace) -> None:
    """Rebuild the trained detector and write `<case>.json` of raw detections for every held-out npz."""
    torch.set_num_threads(args.threads)
    model = Path(args.model)
    config = json.loads((model / "config.json").read_text())
    detector = build_detector(config)
    detector.network.load_state_dict(torch.load(model / "model.pt", map_location="cpu", weights_only=True))
    detector.eval()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for case in load_cases(args.cases, with_boxes=False):
        start = time.perf_counter()
        raw = predict_case(detector, case, config["input_size"])
        (output / f"{case['case']}.json").write_text(json.dumps(raw) + "\n")
        print(f"{case['case']}: {len(raw['boxes'])} boxes in {time.perf_counter() - start:.1f} s", flush=True)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    training = commands.add_parser("train", help="train on a folder of preprocessed cases with its plans.json")
    training.add_argument("--cases", type=Path, required=True, help="autodetr's preprocessed folder (npz + plans.json)")
    training.add_argument("--output", type=Path, required=True, help="model folder to write")
    training.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    training.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    training.add_argument("--seed", type=int, default=0)
    prediction = commands.add_parser("predict", help="raw detections of a folder of preprocessed held-out cases")
    prediction.add_argument("--model", type=Path, required=True, help="model folder written by train")
    prediction.add_argument("--cases", type=Path, required=True, help="folder of <case>.npz to predict")
    prediction.add_argument("--output", type=Path, required=True, help="folder for <case>.json")
    for sub in (training, prediction):
        sub.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    (train if args.command == "train" else predict)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
