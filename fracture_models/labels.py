"""Class names, label indices and split names: the one place they are defined.

The positive class is `fractured` and gets label 1, chosen here by name. It is never inferred
from the alphabetical order of the folders (which would make `fractured` index 0 and is how
the study's reported precision/recall ended up describing `not fractured`).
"""

POSITIVE_CLASS = "fractured"
NEGATIVE_CLASS = "not fractured"

# Index = label. Folder names on disk are exactly these strings.
CLASS_NAMES: tuple[str, str] = (NEGATIVE_CLASS, POSITIVE_CLASS)
POSITIVE_LABEL = CLASS_NAMES.index(POSITIVE_CLASS)
NEGATIVE_LABEL = CLASS_NAMES.index(NEGATIVE_CLASS)

SPLITS: tuple[str, str, str] = ("train", "val", "test")
