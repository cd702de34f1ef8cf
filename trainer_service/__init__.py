"""vlmforge's fine-tuning service: gRPC API, job store, launcher, training worker and evaluation."""
