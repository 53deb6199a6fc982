"""Names of the encoders, heads and value kinds (import-light, for the command line)."""

ENCODERS = ("ae", "vime", "scarf", "byol")
HEADS = ("ffn", "transformer", "gcn", "linear")
HEAD_CHOICES = ("auto", *HEADS)
VALUE_KINDS = ("counts", "intensities", "normalized")
HEAD_INPUTS = ("latent", "genes")
HEAD_INPUT_CHOICES = ("auto", *HEAD_INPUTS)
GENE_INPUT_HEADS = ("linear", "ffn")
SMALL_COHORT_CELLS = 200
"""Below this many training cells the ``auto`` head input is genes; below this many labelled cells the
``auto`` head is ``linear``."""
