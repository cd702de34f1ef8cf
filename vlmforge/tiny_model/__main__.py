"""`python -m vlmforge.tiny_model build MODEL_DIR --data-dir DATA_DIR [--family F]`: build the embedded tiny
Qwen2-VL (or the same recipe in another family's layout) cached by recipe, and print the model directory as
the last line."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from .build import FAMILIES, build_tiny_model, is_built
from .spec import TinyModelSpec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlmforge.tiny_model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the model into MODEL_DIR unless the same recipe is there")
    build.add_argument("model_dir", type=Path)
    build.add_argument("--data-dir", type=Path, required=True,
                       help="where the embedded dataset is (generated there first if missing)")
    build.add_argument("--pretrain-steps", type=int, default=TinyModelSpec.pretrain_steps,
                       help="fewer steps build faster but give a weaker base (tests use a few)")
    build.add_argument("--seed", type=int, default=TinyModelSpec.seed)
    build.add_argument("--family", choices=FAMILIES, default=TinyModelSpec.family)
    args = parser.parse_args(argv)

    spec = dataclasses.replace(TinyModelSpec(), pretrain_steps=args.pretrain_steps, seed=args.seed,
                               family=args.family)
    if is_built(args.model_dir, spec):
        print(f"tiny model up to date ({spec.fingerprint()})")
    else:
        started = time.perf_counter()
        build_tiny_model(args.model_dir, args.data_dir, spec)
        print(f"tiny model built in {time.perf_counter() - started:.1f} s ({spec.fingerprint()})")
    print(args.model_dir.resolve())


if __name__ == "__main__":
    main()
