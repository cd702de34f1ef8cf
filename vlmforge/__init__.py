"""What the trainer and the inference service share: dataset formats, the embedded tiny model and data,
artifact layout. Kept small on purpose; service logic lives in the services."""

__version__ = "0.1.0"
