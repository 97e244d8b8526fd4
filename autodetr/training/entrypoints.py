"""`autodetr_train DATASET FOLD`: the command-line layer over `autodetr.training.train_api.train`."""
from __future__ import annotations

import argparse
import sys

from autodetr.detector import OBJECTIVES
from autodetr.errors import cli_main
from autodetr.paths import PLANS_NAME
from autodetr.plans import BACKBONES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autodetr_train",
        description=(
            "Train Organ-DETR on one fold of a planned and preprocessed dataset (run "
            "autodetr_plan_and_preprocess first). Output: $AUTODETR_results/DatasetXXX_Name/"
            "autodetrTrainer_<objective>__<plans>/fold_<k>/ with checkpoints, training_log.txt, progress.png, "
            "plans.json, arguments.json and validation/ predictions + metrics. Several processes: "
            "torchrun --nproc_per_node K $(which autodetr_train) DATASET FOLD (DistributedDataParallel; "
            "rank 0 writes the files). The five folds can run as independent processes."
        ),
    )
    parser.add_argument("dataset", help="dataset id or name, e.g. 501 or Dataset501_Organs")
    parser.add_argument("fold", help="cross-validation fold: fold0..fold4 or 0..4 (splits_final.json), or 'all' "
                                     "(train on every case, no validation)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="dqm",
                        help="training objective: dqm (Organ-DETR dense query matching), hungarian (one-to-one "
                             "matching) or drmm (D-RMM mixture-model head and loss); default dqm")
    parser.add_argument("--plans", default=PLANS_NAME, help=f"plans name (the preprocessed folder of the plans); default {PLANS_NAME}")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the plan's training.epochs)")
    parser.add_argument("--iters-per-epoch", type=int, default=None,
                        help="optimizer steps per epoch (default: the plan's training.iterations_per_epoch)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size per process (default: from the plans)")
    parser.add_argument("--lr", type=float, default=None, help="base learning rate of AdamW (default: from the plans)")
    parser.add_argument("--device", default="auto", help="training device: auto (cuda if available, else cpu; the default), cpu, cuda or cuda:N; with torchrun, cuda means each rank's own GPU")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="background processes for loading and augmentation; 0 = in the main process "
                             "(default: one per spare CPU core, at most 4)")
    parser.add_argument("--pretrained", default=None, metavar="NAME_OR_PATH",
                        help="start from a packaged model ('phantom-abdomen') or any fold folder or checkpoint file "
                             "(as nnU-Net's -pretrained_weights): the network comes from it, classes are matched by "
                             "name (a class it lacks gets fresh weights and the dataset's atlas anchors); a dataset "
                             "sharing no class with it is refused")
    parser.add_argument("--resume", action="store_true",
                        help="continue from checkpoint_last.pt of the fold (model, optimizer, schedule, position, "
                             "RNG); the same seed gives the same losses as an uninterrupted run")
    parser.add_argument("--val", action="store_true",
                        help="train nothing: rerun the final validation of the fold's checkpoint_final.pt with the "
                             "current prediction code and the fold's own plans (as nnU-Net's --val), rewriting "
                             "validation/ (predictions, metrics.json, reliability.png); checkpoints stay as they are")
    parser.add_argument("--seed", type=int, default=0, help="random seed (model initialisation, batches, augmentation); default 0")
    parser.add_argument("--backbone", choices=list(BACKBONES), default=None,
                        help="replace the planned backbone")
    parser.add_argument("--val-every", type=int, default=None, metavar="K",
                        help="validate (COCO mAP on the fold's validation cases) every K epochs; default: "
                             "automatic, so that validation takes at most 10%% of the training time (measured "
                             "after the first epoch); always after the last epoch")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-clock budget in minutes (of the fold's training, resumed runs included): stop "
                             "cleanly when it is used up, save checkpoint_final.pt and validate; the learning rate "
                             "decay then follows the budget")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a plans value for this training (dotted key, JSON value), e.g. "
                             "--set network.hidden_dim=128 --set training.augmentation.p_mirror=0; repeatable")
    parser.add_argument("--no-progress-bar", action="store_true", help="no tqdm progress bar (log lines only)")
    return parser


def check_inputs(dataset: str, plans_name: str) -> None:
    """Refuse a plans name that is not one folder name, and a plans.json or splits_final.json that is not
    valid, with one line naming the file (training would otherwise stop with a traceback)."""
    from autodetr.model_files import NETWORK_PLAN_KEYS, read_plans
    from autodetr.paths import check_folder_name, preprocessed_root
    from autodetr.preprocessing.splits import read_splits
    from autodetr.training.train_api import _resolve_dataset

    check_folder_name(plans_name, "plans")
    folder = preprocessed_root() / _resolve_dataset(dataset)
    if (folder / plans_name / "plans.json").is_file():
        read_plans(folder / plans_name / "plans.json", NETWORK_PLAN_KEYS)
    if (folder / "splits_final.json").is_file():
        read_splits(folder / "splits_final.json")


@cli_main
def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from autodetr.training.train_api import train

    check_inputs(arguments.dataset, arguments.plans)

    train(
        arguments.dataset, arguments.fold, objective=arguments.objective, plans_name=arguments.plans,
        epochs=arguments.epochs, iterations_per_epoch=arguments.iters_per_epoch, batch_size=arguments.batch_size,
        learning_rate=arguments.lr, device=arguments.device, num_workers=arguments.num_workers,
        resume=arguments.resume, seed=arguments.seed, backbone=arguments.backbone, val_every=arguments.val_every,
        max_minutes=arguments.max_minutes, overrides=arguments.overrides,
        progress_bar=not arguments.no_progress_bar, validation_only=arguments.val, pretrained=arguments.pretrained,
    )
    return 0


if __name__ == "__main__":
    main()
