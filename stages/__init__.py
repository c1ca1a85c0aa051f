"""Pipeline stages. Each module holds one stage: `run(params, paths) -> metrics` plus a thin `main()`.

DVC calls them as `python -m stages.<name>`; tests and flows call `run` directly.
"""
