"""Running the service: the loop, wiring, health, metrics, logs, doctor."""
