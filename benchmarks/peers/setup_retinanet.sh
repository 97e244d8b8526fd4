#!/usr/bin/env bash
# The MONAI RetinaNet peer of benchmarks/bench_vs_retinanet.py in its own virtual environment, .venv-retinanet/
# in the repository (about 5.5 GB: torch 2.14.1 with torchvision 0.29.1 and MONAI 1.6.1; it runs on the CPU).
# A separate environment because torchvision does not import beside the project's CPU build of torch
# ("operator torchvision::nms does not exist"), and MONAI's detection needs it; autodetr never imports either.
#
#   bash benchmarks/peers/setup_retinanet.sh            # once; then python benchmarks/bench_vs_retinanet.py
#   PYTHON=python3.11 bash benchmarks/peers/setup_retinanet.sh   # another interpreter for the environment
set -euo pipefail
cd "$(dirname "$0")/../.."
"${PYTHON:-python3}" -m venv .venv-retinanet
.venv-retinanet/bin/python -m pip install -r benchmarks/peers/requirements-retinanet.txt
.venv-retinanet/bin/python -c "
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
import monai, torch, torchvision
print(f'RetinaNet peer ready: torch {torch.__version__}, torchvision {torchvision.__version__}, MONAI {monai.__version__}')"
