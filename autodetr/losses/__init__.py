"""Matchers (Hungarian, DQM), the set criterion of Eq. 8 and the multiscale segmentation loss."""
from .criterion import SetCriterion, make_targets
from .matchers import DenseQueryMatcher, HungarianMatcher, assign_with_copies, build_matcher, dqm_duplicates
from .segmentation import downsample_labels, multiscale_segmentation_loss, soft_dice_loss

__all__ = [
    "SetCriterion", "make_targets", "DenseQueryMatcher", "HungarianMatcher", "assign_with_copies", "build_matcher",
    "dqm_duplicates", "downsample_labels", "multiscale_segmentation_loss", "soft_dice_loss",
]
