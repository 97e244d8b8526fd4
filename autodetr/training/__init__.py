"""Training (`autodetr_train`): data loading and augmentation, the trainer, checkpoints, DDP.

- `dataset`: preprocessed cases, padding to the network input, the batchgenerators data loader
  (batches are a function of (seed, rank, epoch, iteration));
- `augmentation`: spatial / left-right mirror with lateral label swap / intensity transforms and the
  detection targets recomputed from the augmented label map;
- `trainer`: optimisation loop, validation (COCO mAP), checkpoints, log and progress plot;
- `checkpoint`, `distributed`, `progress_plot`: helpers;
- `train_api.train(dataset, fold, ...)`: the Python API; `entrypoints.main`: the command line.

The network and the objectives come from `autodetr.detector`.
"""
