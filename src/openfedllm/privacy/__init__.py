"""Client-level differential privacy: DP-FedAvg's clipping and noise (dp_fedavg.py) and the
accountant that turns a run's rounds into (epsilon, delta) (accountant.py, dp-accounting's RDP)."""
