"""Data: seeds to noises and conditions (:mod:`.seeds`), image sources (:mod:`.images`), what a dataset
config stands for (:mod:`.datasets`), and the embedded MNIST-5k digits (:mod:`.mnist5k`)."""
