"""The Kubernetes launcher: each fine-tune runs as a batch/v1 Job on a GPU node, reporting through the trainer's
worker API; the trainer reconciles its jobs from the Jobs' status, also after its own restart."""
