"""`python -m trainer_service.cli`: the command line a person uses instead of writing gRPC code.

    create  MODEL TRAIN_FILE [--test-file F] [--max-steps N] ...   submit, then follow with a progress bar
    list | get ID | cancel ID | watch ID [--after N] | checkpoints ID
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

DEFAULT_ADDRESS = os.environ.get("VLMFORGE_TRAINER_ADDRESS", "127.0.0.1:50051")
# soft_wrap: paths and names are printed whole, on one line, so they can be copied (and parsed by scripts).
console = Console(soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with grpc.insecure_channel(args.server) as channel:
        client = trainer_pb2_grpc.FineTuningServiceStub(channel)
        try:
            return args.handler(client, args)
        except grpc.RpcError as error:
            console.print(f"[red]{error.code().name}[/]: {error.details()}")
            return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer_service.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=DEFAULT_ADDRESS, help="trainer address (env VLMFORGE_TRAINER_ADDRESS)")
    commands = parser.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", help="submit a fine-tuning job and follow it")
    create.add_argument("model", help="base model directory, or a name under the trainer's models directory")
    create.add_argument("training_file")
    create.add_argument("--validation-file", default="")
    create.add_argument("--test-file", default="")
    create.add_argument("--suffix", default="")
    create.add_argument("--qlora", action="store_true", help="4-bit base (needs CUDA on the trainer)")
    create.add_argument("--max-steps", type=int)
    create.add_argument("--epochs", type=int)
    create.add_argument("--batch-size", type=int)
    create.add_argument("--learning-rate", type=float)
    create.add_argument("--warmup-steps", type=int)
    create.add_argument("--lora-rank", type=int)
    create.add_argument("--seed", type=int)
    create.add_argument("--gradient-checkpointing", action="store_true", default=None,
                        help="recompute activations in the backward pass: less GPU memory, slower steps")
    create.add_argument("--request-id", default="", help="idempotency key: resubmitting it returns the same job")
    create.add_argument("--no-wait", action="store_true", help="print the job and return at once")
    create.set_defaults(handler=_create)

    commands.add_parser("list", help="list jobs, newest first").set_defaults(handler=_list)
    for name, handler, text in (("get", _get, "show a job"), ("cancel", _cancel, "cancel a job"),
                                ("checkpoints", _checkpoints, "list a job's checkpoints")):
        command = commands.add_parser(name, help=text)
        command.add_argument("job_id")
        command.set_defaults(handler=handler)
    watch = commands.add_parser("watch", help="follow a job's events until it ends")
    watch.add_argument("job_id")
    watch.add_argument("--after", type=int, default=0, help="event sequence to resume after")
    watch.set_defaults(handler=_watch)
    return parser


def _create(client, args) -> int:
    hyper = pb.Hyperparameters()
    for name in ("max_steps", "epochs", "batch_size", "learning_rate", "warmup_steps", "lora_rank", "seed",
                 "gradient_checkpointing"):
        if getattr(args, name) is not None:
            setattr(hyper, name, getattr(args, name))
    job = client.CreateFineTuningJob(pb.CreateFineTuningJobRequest(
        model=args.model, training_file=args.training_file, validation_file=args.validation_file,
        test_file=args.test_file, suffix=args.suffix, hyperparameters=hyper, client_request_id=args.request_id,
        method=pb.FINE_TUNING_METHOD_QLORA if args.qlora else pb.FINE_TUNING_METHOD_LORA))
    console.print(f"created [bold]{job.id}[/] ({pb.JobStatus.Name(job.status)})")
    if args.no_wait:
        return 0
    return follow(client, job.id, 0)


def _watch(client, args) -> int:
    return follow(client, args.job_id, args.after)


def follow(client, job_id: str, after: int) -> int:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=None, loss="-", rate="")
        for event in client.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job_id, after_sequence=after)):
            if event.HasField("progress"):
                step = event.progress
                progress.update(task, completed=step.step, total=step.total_steps, loss=f"{step.loss:.4f}",
                                rate=f"{step.samples_per_second:.1f} samples/s {step.tokens_per_second:.0f} tok/s")
            else:
                progress.console.print(f"#{event.sequence} {event.message}")
    job = client.GetFineTuningJob(pb.GetFineTuningJobRequest(id=job_id))
    _print_outcome(job)
    return 0 if job.status == pb.JOB_STATUS_SUCCEEDED else 1


def _print_outcome(job: pb.FineTuningJob) -> None:
    status = pb.JobStatus.Name(job.status).removeprefix("JOB_STATUS_")
    if job.status != pb.JOB_STATUS_SUCCEEDED:
        console.print(f"[bold red]{status}[/] {job.error.code}: {job.error.message}")
        return
    console.print(f"[bold green]{status}[/]: [bold]{job.fine_tuned_model}[/] ({job.trained_steps} steps)")
    console.print(f"  adapter {job.adapter_path}\n  merged  {job.merged_model_path}")
    if job.HasField("evaluation_after"):
        before, after = job.evaluation_before, job.evaluation_after
        console.print(f"  exact match {before.exact_match:.3f} -> {after.exact_match:.3f}, "
                      f"BERTScore F1 {before.bertscore_f1:.3f} -> {after.bertscore_f1:.3f}")


def _list(client, args) -> int:
    table = Table(Column("id", no_wrap=True, min_width=30), "status", "model", "fine-tuned model", "steps")
    token = ""
    while True:
        page = client.ListFineTuningJobs(pb.ListFineTuningJobsRequest(page_size=100, page_token=token))
        for job in page.jobs:
            table.add_row(job.id, pb.JobStatus.Name(job.status).removeprefix("JOB_STATUS_"), job.model,
                          job.fine_tuned_model, f"{job.trained_steps}/{job.total_steps}")
        token = page.next_page_token
        if not token:
            break
    console.print(table)
    return 0


def _get(client, args) -> int:
    _print_job(client.GetFineTuningJob(pb.GetFineTuningJobRequest(id=args.job_id)))
    return 0


def _cancel(client, args) -> int:
    _print_job(client.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=args.job_id)))
    return 0


def _checkpoints(client, args) -> int:
    table = Table("step", "path")
    for checkpoint in client.ListFineTuningCheckpoints(pb.ListFineTuningCheckpointsRequest(job_id=args.job_id)) \
            .checkpoints:
        table.add_row(str(checkpoint.step), checkpoint.path)
    console.print(table)
    return 0


def _print_job(job: pb.FineTuningJob) -> None:
    console.print_json(data=MessageToDict(job, preserving_proto_field_name=True))


if __name__ == "__main__":
    sys.exit(main())
