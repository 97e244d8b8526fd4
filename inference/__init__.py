"""Inference: `autodetr_predict` (import name `autodetr.inference`).

Modules:
- `inputs`: what `-i` accepts (image folders with optional `_0000` channel suffixes, single files, DICOM)
  and reading a case;
- `dicom`: finding DICOM series recursively (one case per series) and reading them;
- `ensemble`: weighted box clustering of the folds' (and test-time copies') boxes, plain numpy;
- `predict_api`: model and fold selection, the fold ensemble, the per-case pipeline, `predict()`;
- `outputs`: `<case>.json` (the evaluation module's prediction format), `boxes.csv`, box masks;
- `entrypoints`: the argparse layer.

Choices (details in the module docstrings):
- Fusion: per class, weighted box clustering (nnDetection's WBC idea): highest-scoring box seeds a
  cluster of the boxes with IoU >= 0.3; fused box = average weighted by score x IoU with the seed; fused
  score = sum of each member's best score in the cluster / number of members, so folds that found
  nothing count as 0. The best cluster per class is kept (organs occur once; `--max-per-class`).
- TTA: only the mirror that training uses -- the patient's left-right axis (found per case from the
  image direction, as the training loader does), with the plan's lateral pairs (kidney_left /
  kidney_right, ...) swapped back; the mirrored copy is fused like one more ensemble member. Head-foot
  and front-back mirrors are never used: training never shows them, and organ position is a strong cue.
- Memory: every chosen fold's model is loaded once and kept; cases are the outer loop, so each case is
  read and preprocessed once and written as soon as it is done (reruns resume per case). Reading and
  preprocessing run ahead in `-np` worker processes.
"""
