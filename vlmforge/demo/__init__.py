"""`make demo`: the whole product on this machine. Both services start as real processes, the base model
answers test questions through the OpenAI API, a fine-tune is submitted over gRPC and hot-loaded into the
running inference service, the same questions are asked again, and a before/after report is written."""

from trainer_service.job_spec import Hyperparameters

# What a couple of CPU minutes buys on the embedded default (BENCHMARKS.md: exact match 0.14 -> 0.47).
DEMO_HYPERPARAMETERS = Hyperparameters(max_steps=600, batch_size=8, learning_rate=1e-3, warmup_steps=20)
