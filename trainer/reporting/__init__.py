"""Reporting: the leaderboard, plots and docs/evaluation.md rendered from artefacts."""
