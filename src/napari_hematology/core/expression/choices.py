"""Names of the encoders, heads and value kinds (import-light, for the command line)."""

ENCODERS = ("ae", "vime", "scarf", "byol")
HEADS = ("ffn", "transformer", "gcn", "linear")
VALUE_KINDS = ("counts", "intensities", "normalized")
HEAD_INPUTS = ("latent", "genes")
HEAD_INPUT_CHOICES = ("auto", *HEAD_INPUTS)
GENE_INPUT_HEADS = ("linear", "ffn")
