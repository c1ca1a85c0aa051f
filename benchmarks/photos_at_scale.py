"""Benchmark: the pipeline on photos at N and 10·N, memory per stage, and what streaming costs.

Builds `N` and `10·N` photos of 256–512 px (long side) from the shared flowers photos (each a
seeded crop of one of the 2,000, re-encoded as JPEG quality 90, so no two are equal) and measures:

1. ingest's images/s against a bare Pillow loop (open, JPEG draft, RGB, centre-crop resize) on
   the same photos with as many threads as ingest decodes on (target: ≥ 80%);
2. one fine-tuning epoch's images/s streamed from the shards (the stages' path) against the same
   epoch's batches fed from memory (tlpipe.training.augment.training_batches), same model, same
   steps, each timed after a warm-up step (target: ≥ 90%);
3. each stage's peak RSS (the child's own `ru_maxrss`, from wait4) at N and at 10·N, the stages run
   as `python -m stages.<name>` in a scratch project (target: 10·N / N ≤ 1.2). Training stages run
   a capped number of steps (`--steps`): memory, not accuracy, is measured there.

    python benchmarks/photos_at_scale.py                        # N = 20,000 (and 200,000)
    python benchmarks/photos_at_scale.py --n 2000 --size 160    # a quicker look
    python benchmarks/photos_at_scale.py --n 2000 --out result.json
    python benchmarks/photos_at_scale.py --epoch-only . --steps 100   # item 2 on this project's data

The photos and scratch projects go under --work (default /tmp/tlpipe-photos); photos are kept and
reused between runs. Prints figures (and writes them to --out); it is not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared"
FLOWERS = SHARED / "data" / "flowers-photos-train.tar.gz"
WEIGHTS_DIR = SHARED / "weights"
STAGES = ("ingest", "validate", "train", "finetune", "evaluate", "export")


def make_photos(out: Path, n: int) -> Path:
    """`n` photos `<class>/<i>.jpg`, 256–512 px on the long side, each a seeded crop of a flower photo."""
    from PIL import Image

    done = out / ".complete"
    if done.is_file():
        return out
    with tarfile.open(FLOWERS) as tar:
        sources = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile() and m.name.endswith(".jpg")]
    sources.sort()
    by_class: dict[str, list[tuple[str, bytes]]] = {}
    for name, blob in sources:
        by_class.setdefault(name.split("/")[-2], []).append((name, blob))
    classes = sorted(by_class)

    def one(i: int) -> None:
        members = by_class[classes[i % len(classes)]]  # classes in turn: balanced at any n
        name, blob = members[(i // len(classes)) % len(members)]
        rng = np.random.default_rng([7, i])
        img = Image.open(io.BytesIO(blob)).convert("RGB")
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        long_side = int(rng.integers(256, 513))
        scale = long_side / max(cw, ch)
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((max(1, round(cw * scale)), max(1, round(ch * scale))))
        cls = name.split("/")[-2]
        (out / cls).mkdir(parents=True, exist_ok=True)
        img.save(out / cls / f"{i:07d}.jpg", quality=90)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads()) as pool:
        list(pool.map(one, range(n), chunksize=64))
    done.write_text(f"{n} photos in {time.perf_counter() - start:.0f} s\n")
    return out


def threads() -> int:
    from tlpipe.data.decoding import decode_threads

    return decode_threads()


def bare_pillow(photos: Path, size: int) -> float:
    """Images/s of the plainest decode-and-resize loop on the same photos and threads."""
    from PIL import Image

    files = sorted(photos.glob("*/*.jpg"))

    def one(path: Path) -> int:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = img.convert("RGB")
            w, h = img.size
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)).size

    start = time.perf_counter()
    with ThreadPoolExecutor(threads()) as pool:
        list(pool.map(one, files, chunksize=32))
    return len(files) / (time.perf_counter() - start)


def project(root: Path, photos: Path, size: int, steps: int) -> Path:
    """A scratch project whose params train on `photos` for a few steps (a fresh one: no feature
    cache or backup of an earlier run)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update({"source": "folder", "path": str(photos), "image_size": size})
    params["data"].pop("sha256", None)
    params["model"]["weights_dir"] = str(WEIGHTS_DIR)
    params["train"].update({"epochs": 1, "early_stopping": {**params["train"]["early_stopping"], "enabled": False}})
    params["finetune"].update({"epochs": 1, "steps_per_epoch": steps, "train_on_val": False})
    params["export"].update({"variants": [], "eval_images": 256})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def run_stage(root: Path, stage: str) -> dict[str, float]:
    """Run one stage in its own process; its wall time and peak RSS (MiB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TLPIPE_FEATURE_CACHE": str(root / "data" / "features")}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=root, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"stage {stage} failed in {root} (exit {proc.returncode})")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def epoch_streamed_vs_memory(root: Path, steps: int, rounds: int = 3) -> dict[str, float]:
    """One fine-tuning epoch of `steps` batches on the same images, streamed and from memory, in
    `rounds` turns each; the medians."""
    import keras

    from tlpipe.config.params import load_params
    from tlpipe.data.dataset import load_info, split_records
    from tlpipe.data.records import write_records
    from tlpipe.model.classifier import build_classifier, resolve_spec
    from tlpipe.model.unfreeze import unfreeze
    from tlpipe.paths import Paths
    from tlpipe.training.augment import streamed_batches, training_batches
    from tlpipe.training.data import one_hot

    os.chdir(root)
    params = load_params()
    paths = Paths(Path("."))
    info = load_info(paths.prepared)
    fp = params.finetune
    train = split_records(paths.prepared, "train")
    steps = min(steps, train.count // fp.batch_size)
    n = steps * fp.batch_size
    x, y = train.gather(range(n))
    subset = write_records(root / "data" / "subset", "train", x, y)  # the same images, as shards
    spec = resolve_spec(params, tuple(info.image_shape), info.num_classes, paths)
    clf = build_classifier(spec)
    unfreeze(clf.backbone, spec.backbone, fp.unfreeze)  # as the finetune stage trains it
    model = clf.model
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
    onehot = one_hot(y, info.num_classes)

    def memory(epoch: int):
        return training_batches(x, onehot, batch_size=fp.batch_size, seed=0, epoch=epoch, augment=fp.augment)

    def streamed(epoch: int):
        return streamed_batches(
            subset, info.num_classes, batch_size=fp.batch_size, seed=0, epoch=epoch, augment=fp.augment
        )

    rates: dict[str, list[float]] = {"memory": [], "streamed": []}
    for name, make in [("memory", memory), ("streamed", streamed)] * rounds:  # taking turns: load hits both
        model.fit(make(0).take(1), verbose=0)
        start = time.perf_counter()
        model.fit(make(1), verbose=0)
        rates[name].append(n / (time.perf_counter() - start))
    out = {f"{k}_img_per_s": round(float(np.median(v)), 1) for k, v in rates.items()}
    out |= {f"{k}_each": [round(r, 1) for r in v] for k, v in rates.items()}
    out["rounds"] = rounds
    out["streamed_over_memory"] = round(out["streamed_img_per_s"] / out["memory_img_per_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="photos at the smaller scale (10·N at the larger)")
    parser.add_argument("--size", type=int, default=224, help="data.image_size the photos are prepared at")
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps (memory is measured, not accuracy)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlpipe-photos"))
    parser.add_argument("--rounds", type=int, default=5, help="turns of the streamed and in-memory epochs")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--epoch-only",
        type=Path,
        metavar="PROJECT",
        help="only the streamed-vs-memory epoch, on PROJECT's data/prepared",
    )
    args = parser.parse_args()
    if args.epoch_only:
        print(json.dumps(epoch_streamed_vs_memory(args.epoch_only.resolve(), args.steps, args.rounds), indent=1))
        return

    result: dict = {"n": args.n, "size": args.size, "threads": threads(), "load_before": os.getloadavg()}
    for scale in (1, 10):
        count = args.n * scale
        photos = make_photos(args.work / f"photos-{count}", count)
        root = project(args.work / f"project-{count}", photos, args.size, args.steps)
        bare = bare_pillow(photos, args.size)
        stages = {stage: run_stage(root, stage) for stage in STAGES}
        timings = json.loads((root / "reports" / "ingest" / "timings.json").read_text())
        # Reading and decoding (what the bare loop does) in the stage; then the whole stage, shards
        # written, and with Python's and TensorFlow's start-up.
        decode_rate = count / timings["read_seconds"]
        result[str(count)] = {
            "bare_pillow_img_per_s": round(bare, 1),
            "ingest_decode_img_per_s": round(decode_rate, 1),
            "ingest_stage_img_per_s": timings["images_per_second"],
            "ingest_process_img_per_s": round(count / stages["ingest"]["seconds"], 1),
            "ingest_decode_over_bare": round(decode_rate / bare, 3),
            "stages": stages,
        }
        print(json.dumps({count: result[str(count)]}, indent=1), flush=True)
    small, large = result[str(args.n)]["stages"], result[str(10 * args.n)]["stages"]
    result["peak_rss_ratio"] = {s: round(large[s]["peak_rss_mib"] / small[s]["peak_rss_mib"], 3) for s in STAGES}
    # Last: TensorFlow in this process would count in every later child's ru_maxrss (fork copies it).
    result["epoch"] = epoch_streamed_vs_memory(args.work / f"project-{args.n}", args.steps, args.rounds)
    print(json.dumps({"epoch": result["epoch"]}, indent=1), flush=True)
    result["load_after"] = os.getloadavg()
    print(json.dumps({"peak_rss_ratio": result["peak_rss_ratio"], "load": result["load_after"]}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
