"""Data: finding files and layouts (`folders`), the datasets of each task (`classification`, `segmentation`,
`depth`), decoding with one convention for a sample that failed, the training and evaluation transforms
(`transforms`) and the samplers (`sampling`). Training and evaluation both stand on it; neither imports the other's
data.

A dataset item is `(pixels, target, weight, index, reason)`: a sample that cannot be decoded yields weight 0 and the
reason (pixels and target then are zeros of the batch's shape, or None where samples have no common shape), so a
batch keeps its shape, the loss and counts leave it out, and the run reports it instead of stopping.
"""
