"""The GPU check's report: one JSON and one Markdown file, rewritten after every step so that
whatever finished is on disk when the lease or the budget runs out."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Report:
    def __init__(self, folder: Path, header: dict[str, Any]) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {**header, "steps": [], "facts": {}, "figures": {}}
        self.save()

    def add_step(self, record: dict[str, Any]) -> None:
        self.data["steps"].append(record)
        self.save()

    def set(self, section: str, key: str, value: Any) -> None:
        self.data[section][key] = value
        self.save()

    def save(self) -> None:
        # Write then rename: a kill mid-write leaves the previous complete report, never half of one.
        texts = {"gpu_check.json": json.dumps(self.data, indent=2, default=str), "gpu_check.md": self.markdown()}
        for name, text in texts.items():
            tmp = self.folder / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.folder / name)

    def markdown(self) -> str:
        d = self.data
        lines = [
            f"# GPU check ({'dry run, CPU' if d.get('dry_run') else 'GPU'})",
            "",
            f"Started {d.get('started')}, budget {d.get('budget_s')} s, host {d.get('host')}.",
            "",
            "| step | status | seconds | message |",
            "|---|---|---|---|",
        ]
        for s in d["steps"]:
            message = (s.get("message") or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {message} |")
        if d["facts"]:
            lines += ["", "## Versions, devices, providers", ""]
            for key, value in d["facts"].items():
                lines.append(f"- **{key}**: `{json.dumps(value, default=str)}`")
        if d["figures"]:
            lines += ["", "## Figures", ""]
            for key, value in d["figures"].items():
                lines += [f"### {key}", "", *figure_lines(value), ""]
        return "\n".join(lines) + "\n"


def figure_lines(value: Any) -> list[str]:
    """A benchmark's throughput table, or the value as JSON."""
    if isinstance(value, dict) and "models" in value:
        rows = ["| model | provider | batch | images/s | p50 ms |", "|---|---|---|---|---|"]
        for name, res in value["models"].items():
            for r in res.get("rows", []):
                rows.append(
                    f"| {name} | {res.get('provider')} | {r['batch_size']} | {r['throughput']:.1f} |"
                    f" {r['latency_p50_ms']:.2f} |"
                )
        return rows
    return ["```json", json.dumps(value, indent=2, default=str), "```"]
