"""The science of ft_assets, with no Dagster imports: one package per stage of the asset graph, as in defs/.

  ingest/      raw corpora: landing listings (local or s3://) and the readers that load files into DuckDB
  datasets/    cleaning in DuckDB SQL, redaction, splits, quarantine
  training/    the training loop, task setups, methods, base models, checkpoints, several processes, resume
  evaluation/  metrics, baselines, forgetting, gates, reports, leaderboards, plots
  models/      the champion of each dataset and the model cards
Shared by the stages: config (the project YAML's schema), schemas (the contracts of raw and clean rows,
checked in DuckDB), storage (atomic and published folders, hashes) and lineage (what produced what, code versions).
"""
