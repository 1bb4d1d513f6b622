"""models/<dataset>/champion: the pick among a dataset's gated reports (champion) and the model cards."""
