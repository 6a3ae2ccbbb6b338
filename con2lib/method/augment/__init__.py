"""Context augmentations (t_c) and batched content augmentations (the SimCLR set T)."""

from con2lib.method.augment.content import ContentAugment, normalize
from con2lib.method.augment.context import CONTEXT_AUGMENTATIONS, context_augment

__all__ = ["CONTEXT_AUGMENTATIONS", "ContentAugment", "context_augment", "normalize"]
