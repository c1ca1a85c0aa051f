"""Named parameter presets (presets/<name>.yaml) as `dvc exp run -S key=value` overrides.

    python -m stages.presets                    # list the presets
    python -m stages.presets gpu                # -S backbone=convnext_tiny -S model.image_scale=1.0 ...
    python -m stages.presets gpu --command      # the whole `dvc exp run -n gpu -S ...` line
    python -m stages.presets gpu --runtime      # precision and XLA it gets on common GPU machines
    python -m stages.presets gpu | xargs dvc exp run -n gpu
    python -m stages.presets gpu photos         # several presets merged in order (later names win)

Printing the overrides (instead of switching files) keeps every run a DVC experiment over the
same params.yaml, comparable in `dvc exp show`. A preset is checked against the schema (merged
over params.yaml) before anything is printed (tlpipe.config.presets).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml

from stages.cli import exit_on_bad_input
from tlpipe.config.params import DEFAULT_PARAMS, deep_merge
from tlpipe.config.presets import apply, available, load_preset, overrides, runtime_table
from tlpipe.util.quiet import quiet_entry_point


def main(argv: list[str] | None = None) -> None:
    quiet_entry_point()
    parser = argparse.ArgumentParser(prog="python -m stages.presets", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help="presets/<name>.yaml names, merged in order (later ones win); none: list them"
    )
    parser.add_argument("--command", action="store_true", help="print the whole `dvc exp run` command")
    parser.add_argument(
        "--runtime", action="store_true", help="print the precision and XLA the preset gets on common GPU machines"
    )
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="the params.yaml the preset applies to")
    args = parser.parse_args(argv)
    if not args.names:
        for name, about in available().items():
            print(f"{name:22s} {about}")
        return
    with exit_on_bad_input():  # a ParamsError is a ValueError
        preset: dict = {}
        for name in args.names:
            preset = deep_merge(preset, load_preset(name))
        base = yaml.safe_load(Path(args.params).read_text()) if Path(args.params).is_file() else {}
        params = apply(preset, base or {})
    if args.runtime:
        print("\n".join(runtime_table(params)))
        return
    words = [w for kv in overrides(preset, base or None) for w in ("-S", shlex.quote(kv))]
    if args.command:
        words = ["dvc", "exp", "run", "-n", "-".join(args.names), *words]
    print(" ".join(words))


if __name__ == "__main__":
    main()
