"""Evaluation: metrics, anomaly-map scoring, result files and visualisation."""
