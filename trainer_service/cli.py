"""`python -m trainer_service.cli`: the command line a person uses instead of writing gRPC code (built on
`vlmforge.client`).

    create  MODEL TRAINING_FILE [--test-file F] [--max-steps N] ...   submit, then follow with a progress bar
    create  --llamafactory-config train_lora.yaml [MODEL] ...         the same job LLaMA-Factory would train
    list | get ID | cancel ID | watch ID [--after N] | checkpoints ID
    files upload PATH | files list | files get ID | files delete ID
    download JOB_ID DEST [--merged]                                   the adapter (and merged model), verified

Dataset paths: a local path is uploaded (a directory as a tar) when the trainer cannot see it, which the CLI
takes to be whenever --server is not a loopback address (localhost, 127.0.0.0/8, ::1, a unix socket); --upload
forces the upload (a trainer in a container on this machine), --no-upload sends the path as it is (a shared
filesystem). `file-...` ids are always sent as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table

from vlmforge.client import Trainer, TrainerError, types
from vlmforge.client._trainer import resolve_address
from vlmforge.client.llamafactory import DATASET_INFO, LlamaFactoryConfigError, Migration, migrate

# soft_wrap: paths and names are printed whole, on one line, so they can be copied (and parsed by scripts).
console = Console(soft_wrap=True)
_HYPERPARAMETER_FLAGS = ("max_steps", "epochs", "batch_size", "learning_rate", "warmup_steps", "warmup_ratio",
                         "validation_split", "max_samples", "lora_rank", "seed", "gradient_checkpointing")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Trainer(args.server, api_key=args.api_key, tls=args.tls, ca_bundle=args.ca_bundle,
                     client_cert=args.client_cert, client_key=args.client_key) as client:
            return args.handler(client, args)
    except TrainerError as error:
        name = error.code.name if error.code else "ERROR"
        console.print(f"[red]{name}[/]: {escape(error.details)}")
        return 1
    except (ValueError, OSError) as error:  # a local file, a YAML, an argument (LlamaFactoryConfigError too)
        console.print(f"[red]error[/]: {escape(str(error))}")
        return 2
    except KeyboardInterrupt:
        console.print("interrupted (a submitted job goes on: `watch JOB_ID` follows it again)")
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer_service.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=resolve_address(None),
                        help="trainer address (env VLMFORGE_TRAINER_ADDRESS; default 127.0.0.1:50051)")
    parser.add_argument("--api-key", default=None, help="sent as a bearer token (env VLMFORGE_API_KEY, which "
                        "keeps it out of `ps` and shell history)")
    parser.add_argument("--ca-bundle", default=None, help="PEM roots of the trainer's certificate: connect with TLS "
                        "(env VLMFORGE_CA_BUNDLE)")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=None,
                        help="TLS trusting the system's roots (--no-tls: plaintext whatever the environment says)")
    parser.add_argument("--client-cert", default=None, help="PEM client certificate, for a trainer that requires "
                        "one (mTLS; env VLMFORGE_CLIENT_CERT)")
    parser.add_argument("--client-key", default=None, help="its private key (env VLMFORGE_CLIENT_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_create(commands)

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

    download = commands.add_parser("download", help="download a succeeded job's adapter (sha256-checked)")
    download.add_argument("job_id")
    download.add_argument("dest", help="a new directory: DEST/adapter (and DEST/merged_model with --merged)")
    download.add_argument("--merged", action="store_true", help="also the merged 16-bit model")
    download.set_defaults(handler=_download)

    files = commands.add_parser("files", help="uploaded datasets").add_subparsers(dest="files_command",
                                                                                  required=True)
    upload = files.add_parser("upload", help="upload a dataset file, archive or directory (resumable)")
    upload.add_argument("path")
    upload.set_defaults(handler=_files_upload)
    files.add_parser("list", help="list uploaded files, newest first").set_defaults(handler=_files_list)
    for name, handler, text in (("get", _files_get, "show a file"), ("delete", _files_delete, "delete a file")):
        command = files.add_parser(name, help=text)
        command.add_argument("file_id")
        command.set_defaults(handler=handler)
    return parser


def _add_create(commands) -> None:
    create = commands.add_parser("create", help="submit a fine-tuning job and follow it")
    create.add_argument("model", nargs="?", help="base model directory, or a name under the trainer's models "
                                                 "directory (from the YAML with --llamafactory-config)")
    create.add_argument("training_file", nargs="?", help="a path, a directory, or an uploaded file id")
    create.add_argument("--validation-file", default="")
    create.add_argument("--test-file", default="")
    create.add_argument("--dataset-name", default="",
                        help="the entry of the LLaMA-Factory dataset_info.json that TRAINING_FILE names")
    create.add_argument("--llamafactory-config", type=Path, metavar="YAML",
                        help="a LLaMA-Factory training YAML: its model, dataset and hyperparameters (flags win)")
    create.add_argument("--ignore-unsupported", action="store_true",
                        help="with --llamafactory-config: submit even if some keys cannot be honored")
    where = create.add_mutually_exclusive_group()
    where.add_argument("--upload", action="store_true", default=None, help="upload local dataset paths")
    where.add_argument("--no-upload", dest="upload", action="store_false",
                       help="send dataset paths as they are (the trainer shares this filesystem)")
    create.add_argument("--suffix", default="")
    create.add_argument("--qlora", action="store_true", help="4-bit base (needs CUDA on the trainer)")
    create.add_argument("--max-steps", type=int)
    create.add_argument("--epochs", type=int)
    create.add_argument("--batch-size", type=int)
    create.add_argument("--learning-rate", type=float)
    create.add_argument("--warmup-steps", type=int)
    create.add_argument("--warmup-ratio", type=float, help="warmup as a share of the total steps")
    create.add_argument("--validation-split", type=float,
                        help="share of the training file held out for validation (no --validation-file)")
    create.add_argument("--max-samples", type=int, help="train on the first N records only")
    create.add_argument("--lora-rank", type=int)
    create.add_argument("--seed", type=int)
    create.add_argument("--gradient-checkpointing", action="store_true", default=None,
                        help="recompute activations in the backward pass: less GPU memory, slower steps")
    create.add_argument("--request-id", default="", help="idempotency key: resubmitting it returns the same job")
    create.add_argument("--no-wait", action="store_true", help="print the job and return at once")
    create.set_defaults(handler=_create)


def server_is_loopback(address: str) -> bool:
    """Whether the trainer runs on this machine, judged from its address alone (no DNS lookup)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    target = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host = target[1:].split("]")[0] if target.startswith("[") else target.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _should_upload(value: str, args) -> bool:
    if not value or value.startswith("file-") or args.upload is False:
        return False
    if args.upload:
        if not Path(value).exists():
            raise ValueError(f"{value}: no such local file or directory to upload")
        return True
    return Path(value).exists() and not server_is_loopback(args.server)


def _create(client: Trainer, args) -> int:
    migration = _migration(client, args)
    request = dict(migration.create_kwargs) if migration else {"hyperparameters": {}}
    hyper = dict(request.pop("hyperparameters"))
    for name in _HYPERPARAMETER_FLAGS:
        if getattr(args, name) is not None:
            hyper[name] = getattr(args, name)
    for name in ("model", "training_file"):
        if getattr(args, name):
            request[name] = getattr(args, name)
        elif not request.get(name):
            raise ValueError(f"create: {name.upper()} is required (or --llamafactory-config)")
    if args.dataset_name:
        request["dataset_name"] = args.dataset_name
    if args.qlora:
        request["method"] = "qlora"
    for name in ("training_file", "validation_file", "test_file"):
        value = request.get(name) or getattr(args, name, "")
        request[name] = _upload(client, value) if _should_upload(value, args) else value
    job = client.jobs.create(**request, hyperparameters=hyper, suffix=args.suffix, request_id=args.request_id)
    console.print(f"created [bold]{job.id}[/] ({_enum('JOB_STATUS', job.status)})")
    if args.no_wait:
        return 0
    return follow(client, job.id, 0)


def _migration(client: Trainer, args) -> Migration | None:
    if args.llamafactory_config is None:
        return None
    migration = migrate(args.llamafactory_config)
    for line in migration.report():
        console.print(escape(line), style="red" if line.startswith("unsupported") else "dim")
    if migration.unsupported and not args.ignore_unsupported:
        raise LlamaFactoryConfigError(
            f"{args.llamafactory_config}: keys this trainer cannot honor: {', '.join(migration.unsupported)} "
            "(remove them, or pass --ignore-unsupported)")
    if not args.training_file and _should_upload(migration.create_kwargs["training_file"], args):
        # The whole dataset_dir travels, less the files of its other datasets (the trainer wants one).
        migration.create_kwargs["training_file"] = _upload(client, str(migration.dataset_dir),
                                                           exclude=_other_datasets(migration))
    return migration


def _other_datasets(migration: Migration) -> frozenset[str]:
    info = json.loads((migration.dataset_dir / DATASET_INFO).read_text(encoding="utf-8"))
    chosen = migration.create_kwargs["dataset_name"]
    return frozenset(Path(entry["file_name"]).as_posix() for name, entry in info.items()
                     if name != chosen and isinstance(entry, dict) and isinstance(entry.get("file_name"), str)
                     and entry["file_name"] != info.get(chosen, {}).get("file_name"))


def _upload(client: Trainer, path: str, *, exclude: frozenset[str] = frozenset()) -> str:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"uploading {Path(path).name}", total=None)

        def on_progress(update: types.UploadProgress) -> None:
            progress.update(task, completed=update.sent_bytes, total=update.total_bytes)

        file = client.files.upload(path, progress=on_progress, exclude=exclude)
    console.print(f"uploaded {escape(path)} as [bold]{file.id}[/] ({file.bytes} bytes, sha256 {file.sha256[:12]})")
    return file.id


def _watch(client: Trainer, args) -> int:
    return follow(client, args.job_id, args.after)


def follow(client: Trainer, job_id: str, after: int) -> int:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=None, loss="-", rate="")
        for event in client.jobs.events(job_id, after_sequence=after):
            if isinstance(event.data, types.TrainingProgress):
                step = event.data
                progress.update(task, completed=step.step, total=step.total_steps, loss=f"{step.loss:.4f}",
                                rate=f"{step.samples_per_second:.1f} samples/s {step.tokens_per_second:.0f} tok/s")
            else:
                progress.console.print(f"#{event.sequence} {escape(event.message)}")
    job = client.jobs.retrieve(job_id)
    _print_outcome(job)
    return 0 if job.status == "succeeded" else 1


def _print_outcome(job: types.FineTuningJob) -> None:
    status = job.status.upper()
    if job.status != "succeeded":
        error = job.error or types.JobError("", "")
        console.print(f"[bold red]{status}[/] {escape(error.code)}: {escape(error.message)}")
        return
    console.print(f"[bold green]{status}[/]: [bold]{job.fine_tuned_model}[/] ({job.trained_steps} steps)")
    console.print(f"  adapter {job.adapter_path}\n  merged  {job.merged_model_path}")
    if job.evaluation_after is not None and job.evaluation_before is not None:
        before, after = job.evaluation_before, job.evaluation_after
        console.print(f"  exact match {before.exact_match:.3f} -> {after.exact_match:.3f}, "
                      f"BERTScore F1 {before.bertscore_f1:.3f} -> {after.bertscore_f1:.3f}")


def _list(client: Trainer, args) -> int:
    table = Table(Column("id", no_wrap=True, min_width=30), "status", "model", "fine-tuned model", "steps")
    for job in client.jobs.list():
        table.add_row(job.id, job.status.upper(), job.model, job.fine_tuned_model,
                      f"{job.trained_steps}/{job.total_steps}")
    console.print(table)
    return 0


def _get(client: Trainer, args) -> int:
    _print_json(_job_json(client.jobs.retrieve(args.job_id)))
    return 0


def _cancel(client: Trainer, args) -> int:
    _print_json(_job_json(client.jobs.cancel(args.job_id)))
    return 0


def _checkpoints(client: Trainer, args) -> int:
    table = Table("step", "path")
    for checkpoint in client.jobs.checkpoints(args.job_id):
        table.add_row(str(checkpoint.step), checkpoint.path)
    console.print(table)
    return 0


def _download(client: Trainer, args) -> int:
    columns = (TextColumn("[bold]{task.description}"), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"downloading {args.job_id}", total=None)
        downloaded = client.jobs.download_adapter(args.job_id, args.dest, merged=args.merged,
                                                  progress=lambda received: progress.update(task, completed=received))
    console.print(f"adapter {downloaded.adapter_path}")
    if downloaded.merged_model_path:
        console.print(f"merged  {downloaded.merged_model_path}")
    console.print(f"  {downloaded.bytes} bytes, sha256 {downloaded.sha256} (verified)")
    return 0


def _files_upload(client: Trainer, args) -> int:
    file_id = _upload(client, args.path)
    _print_json(_plain(client.files.retrieve(file_id)))
    return 0


def _files_list(client: Trainer, args) -> int:
    table = Table(Column("id", no_wrap=True, min_width=29), "filename", "bytes", "status", "records", "created")
    for file in client.files.list():
        table.add_row(file.id, file.filename, str(file.bytes), file.status,
                      "" if file.record_count is None else str(file.record_count),
                      file.created_at.isoformat(timespec="seconds") if file.created_at else "")
    console.print(table)
    return 0


def _files_get(client: Trainer, args) -> int:
    _print_json(_plain(client.files.retrieve(args.file_id)))
    return 0


def _files_delete(client: Trainer, args) -> int:
    deleted = client.files.delete(args.file_id)
    console.print(f"deleted {deleted.id}" if deleted.deleted else f"{deleted.id} was not deleted")
    return 0 if deleted.deleted else 1


def _enum(prefix: str, value: str) -> str:
    return f"{prefix}_{value.upper()}"


def _job_json(job: types.FineTuningJob) -> dict:
    """The job as grpcurl shows it (enum names, RFC 3339 times, unset fields left out), so scripts that read
    `get` before the CLI used the client keep working."""
    data = _plain(job)
    data["status"] = _enum("JOB_STATUS", job.status)
    data["method"] = _enum("FINE_TUNING_METHOD", job.method)
    if job.hyperparameters.scheduler:
        data["hyperparameters"]["scheduler"] = _enum("LEARNING_RATE_SCHEDULER", job.hyperparameters.scheduler)
    return data


def _plain(value) -> dict:
    def clean(item):
        if isinstance(item, dict):
            return {k: clean(v) for k, v in item.items() if v is not None and v not in ("", (), [], {})}
        if isinstance(item, (list, tuple)):
            return [clean(v) for v in item]
        if isinstance(item, datetime):
            return item.isoformat().replace("+00:00", "Z")
        return item
    return clean(dataclasses.asdict(value))


def _print_json(data: dict) -> None:
    console.print_json(data=data)


if __name__ == "__main__":
    sys.exit(main())
