"""Source-model preparation: the training script of the bundled model and the artefact builder."""
