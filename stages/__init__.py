"""The DVC entry points, run as `python -m stages.<name>`, and nothing else: the library they call
is the tlpipe package.

The stage modules are the stages of dvc.yaml (ingest, validate, train, finetune, evaluate, export,
benchmark, model_card); each holds `run(params, paths) -> metrics` and a thin `main()`. Beside them:
`predict` and `presets` (command lines outside `dvc repro`) and `cli`, which is not a stage but the
harness they share. No stage module imports another, so dvc.yaml can list exactly the code each stage
runs (tests/test_dvc_yaml.py checks it). Importing this package has no side effects: each entry point
quiets TensorFlow's start-up when it runs (tlpipe.util.quiet.quiet_entry_point).
"""
