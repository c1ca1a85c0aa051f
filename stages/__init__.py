"""Pipeline stages: one module per DVC stage, run as `python -m stages.<name>`, plus the library
modules they share.

The stage modules are the stages of dvc.yaml (ingest, validate, train, finetune, evaluate,
export, benchmark, model_card). Each holds `run(params, paths) -> metrics` and a thin `main()`;
none imports another, so dvc.yaml can list exactly the code each stage runs
(tests/test_dvc_yaml.py checks it).
"""

import os
import sys

# Before TensorFlow is first imported: its C++ start-up messages are noise in DVC and Prefect logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if getattr(sys, "orig_argv", [])[1:3][:1] == ["-m"] and str(sys.orig_argv[2]).startswith("stages."):
    from stages.quiet import filter_native_stderr

    filter_native_stderr()
