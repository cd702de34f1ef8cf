"""`python -m vlmforge.datagen build DIR`: generate the embedded dataset (cached) and print its directory last."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .build import DatasetSpec, build_dataset, is_built


def main(argv: list[str] | None = None) -> None:
    defaults = DatasetSpec()
    parser = argparse.ArgumentParser(prog="python -m vlmforge.datagen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="generate the dataset into DIR unless an identical one is there")
    build.add_argument("output_dir", type=Path)
    build.add_argument("--seed", type=int, default=defaults.seed)
    build.add_argument("--image-size-px", type=int, default=defaults.image_size_px)
    for split in ("train", "validation", "test", "pretrain"):
        build.add_argument(f"--{split}-images", type=int, default=defaults.images_in(split))
    build.add_argument("--workers", type=int, default=None, help="processes drawing images (default: up to 4)")
    args = parser.parse_args(argv)

    spec = DatasetSpec(seed=args.seed, image_size_px=args.image_size_px, train_images=args.train_images,
                       validation_images=args.validation_images, test_images=args.test_images,
                       pretrain_images=args.pretrain_images)
    if is_built(args.output_dir, spec):
        print(f"dataset up to date ({spec.fingerprint()})")
    else:
        started = time.perf_counter()
        build_dataset(args.output_dir, spec, workers=args.workers)
        print(f"dataset generated in {time.perf_counter() - started:.1f} s ({spec.fingerprint()})")
    print(args.output_dir.resolve())


if __name__ == "__main__":
    main()
