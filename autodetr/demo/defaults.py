"""Default size of the demo: on a 2-core CPU, 64 full-size training phantoms and 20 minutes of training give
held-out mAP 0.70 (16 phantoms and 10 minutes: 0.39, measured before the decoder read the fine level; the
detector is limited by its training cases and steps, see docs/benchmarks.md, training). Data, planning and
prediction take about 5 minutes more."""

DEFAULT_NUM_CASES = 64
DEFAULT_MINUTES = 20.0
