"""tlpipe, the library beneath the DVC stages (stages/) and the Prefect flows (flows/), by domain:

- config: the typed params.yaml, one module per section (tlpipe.config.params puts them together)
- data: the prepared-data contract, and one module per source behind a registry (tlpipe.data.sources)
- model: the backbone registry, the classifier, its weights, saving and loading
- training: the phase both training stages run, its epoch loop, backups and reports
- evaluation, export (the ONNX contract, the converter, variants behind a registry), bench, predict
- util, paths, runtime: what every domain shares

Importing any of it has no side effects. Every logger, here and in stages/, is named after its module's
import name, `logging.getLogger(__spec__.name)` (which stays `stages.<name>` under `python -m`, where
`__name__` is `__main__`).
"""
