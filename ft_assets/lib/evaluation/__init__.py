"""reports/<recipe> and leaderboards: task metrics and baselines (metrics), forgetting, gates, the report
of one checkpoint (report), the leaderboard of a dataset, and their figures (plots)."""
