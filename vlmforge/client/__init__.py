"""A typed Python client of the vlmforge trainer (gRPC), shaped like the OpenAI SDK's fine-tuning calls::

    from vlmforge.client import Trainer

    # api_key / ca_bundle default to $VLMFORGE_API_KEY / $VLMFORGE_CA_BUNDLE (the CA makes the channel TLS)
    with Trainer("trainer.example:50051", api_key="vlmf_...", ca_bundle="trainer-ca.pem") as client:
        file = client.files.upload("./my_dataset_dir")          # resumable; a directory goes as a tar
        job = client.jobs.create(model="Qwen2-VL-2B-Instruct", training_file=file.id)
        job = client.jobs.wait(job.id, on_event=print)           # follows events, reconnecting
        client.jobs.download_adapter(job.id, "./adapter")        # sha256-checked

It returns frozen dataclasses (`vlmforge.client.types`) and raises one error class per gRPC status code
(`vlmforge.client.errors`). It imports only the generated stubs, never the trainer's own code.
"""

from . import errors, types
from ._aio import AsyncTrainer
from ._trainer import Trainer
from .errors import (
    AuthenticationError,
    DataLossError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TrainerError,
    UnavailableError,
)
from .types import FileObject, FineTuningJob, Hyperparameters, JobEvent

__all__ = [
    "AsyncTrainer", "AuthenticationError", "DataLossError", "FailedPreconditionError", "FileObject", "FineTuningJob",
    "Hyperparameters", "InvalidArgumentError", "JobEvent", "NotFoundError", "PermissionDeniedError",
    "ResourceExhaustedError", "Trainer", "TrainerError", "UnavailableError", "errors", "types",
]
