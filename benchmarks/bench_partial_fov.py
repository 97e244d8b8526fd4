"""A trained model on phantoms cut to partial fields of view, beside the same patients' full scans.

    python benchmarks/bench_partial_fov.py -m $AUTODETR_results/Dataset500_Phantom/autodetrTrainer_dqm__autodetrPlans
    python benchmarks/bench_partial_fov.py -m MODEL --appearance randomised --num-cases 8 --seed 21

For `--num-cases` new patients (held-out phantom indices of `--seed`, which no training set of another seed
holds), one scan per field of view (`standard`: liver dome to bladder or iliac crest; `upper_abdomen`: liver
dome to the kidneys' lower poles; `pelvis`: L4 to below the bladder; `random`: anywhere from chest to pelvis;
`autodetr.phantom.randomised.FIELDS_OF_VIEW`), each predicted with `autodetr_predict` and scored with
`autodetr_evaluate` against its own labels: organs cut by the scan's ends keep their cut box, organs outside
it are absent. A detector that reads an organ's place from where the scan ends loses on the partial ones.
Prints one table (mAP, mAR, AP50, AP75 per field of view) and writes `bench_partial_fov.json` into
`benchmarks/output/bench_partial_fov/<name>/`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_peer import format_table  # noqa: E402

from autodetr.evaluation.api import evaluate_folder  # noqa: E402
from autodetr.inference.predict_api import predict  # noqa: E402
from autodetr.phantom.generator import FILE_ENDING, TEST_INDEX_OFFSET, dataset_json, generate_case, write_case  # noqa: E402
from autodetr.phantom.randomised import APPEARANCES, FIELDS_OF_VIEW  # noqa: E402


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-m", "--model", type=Path, required=True, help="trained model folder")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds to use (default: autodetr_predict's)")
    parser.add_argument("--appearance", choices=APPEARANCES, default="realistic", help="appearance of the test phantoms")
    parser.add_argument("--fields", nargs="+", choices=FIELDS_OF_VIEW, default=["standard", "upper_abdomen", "pelvis"],
                        help="fields of view to score")
    parser.add_argument("--num-cases", type=int, default=8, help="patients per field of view")
    parser.add_argument("--seed", type=int, default=21, help="phantom seed of the test patients")
    parser.add_argument("--name", default="model", help="name of this run (output sub-folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "output" / "bench_partial_fov")
    return parser.parse_args(argv)


def write_test_set(folder: Path, args: argparse.Namespace, field: str) -> Path:
    """`folder` as a raw dataset with only imagesTs / labelsTs: the test patients scanned over `field`
    (cases already there are reused only if its dataset.json records the same phantom and generator version)."""
    described = dataset_json(0, args.num_cases, args.seed, "full", args.appearance, field)
    json_path = folder / "dataset.json"
    recorded = json.loads(json_path.read_text()).get("phantom") if json_path.is_file() else None
    if folder.exists() and recorded != described["phantom"]:
        shutil.rmtree(folder)  # another generator version, other settings or unknown: make them again
    for sub in ("imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(described))  # first: it describes every case that will be written here
    for k in range(args.num_cases):
        case = f"phantom_test_{k:03d}"
        image, label = folder / "imagesTs" / f"{case}_0000{FILE_ENDING}", folder / "labelsTs" / f"{case}{FILE_ENDING}"
        if not (image.is_file() and label.is_file()):
            write_case(generate_case(TEST_INDEX_OFFSET + k, args.seed, "full", args.appearance, field), image, label)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    output = args.out / args.name
    rows, result = [], {"model": str(args.model), "appearance": args.appearance, "seed": args.seed, "fields": {}}
    for field in args.fields:
        data = write_test_set(args.out / "data" / f"{args.appearance}_{args.seed}_{field}", args, field)
        predictions = output / field / "predictions"
        predict(data / "imagesTs", predictions, model=str(args.model), folds=args.folds, num_processes=1, overwrite=True,
                progress=False)
        metrics = evaluate_folder(predictions, data / "labelsTs", output_folder=output / field / "evaluation")
        figures = {key: metrics.get(key) for key in ("mAP", "mAR", "AP50", "AP75")}
        result["fields"][field] = figures
        rows.append([field, *(None if v is None else round(float(v), 3) for v in figures.values())])
        print(f"{field}: {figures}", flush=True)
    print(f"\n{args.num_cases} new phantom patients ({args.appearance}, seed {args.seed}), model {args.model}")
    print(format_table(["field of view", "mAP", "mAR", "AP50", "AP75"], rows))
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench_partial_fov.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
