"""Training speed on one GPU, the plain loop against the fast path, in one budgeted run (issue 18).

    python benchmarks/gpu_speed.py run --out benchmarks/results/gpu_speed.json [--budget-s 520]
    python benchmarks/gpu_speed.py run --smoke --out /tmp/gpu_speed_smoke.json   # CPU, 32 px, seconds

Parts, in order; each is timed, and a part that would not fit in what is left of `--budget-s` is
skipped (named in `skipped`). The JSON is rewritten after every part, so a run cut short still
leaves what it measured.

1. `plain_vgg16_images_per_s`: today's loop (a host sync per batch, torch's default Adam,
   validation at the training batch size), VGG16, 224 px, batch 32, bf16, channels_last.
2. The fast path (`fracture_models.fast`: no host syncs, fused Adam) for VGG16 with 1 and with
   K processes training at once on the GPU, each its own trial with batch 32; then K with CUDA
   MPS if the daemon starts; then ResNet50 with the best sharing. The aggregate is the sum of the
   processes' images/s over one common window. `vgg16_images_per_s` and `resnet50_images_per_s`
   are the best aggregates measured, and `best_sharing` says how.
3. torch.compile ("reduce-overhead": Inductor with CUDA graphs) for one VGG16 process, with its
   compile time (`warm_up_s`), only while `--search-reserve-s` stays for the search; if it pays
   (>= 1.1x), again with the best sharing, and the search's workers use it (compiling from
   torch's on-disk cache, TORCHINDUCTOR_CACHE_DIR, that the first process wrote).
4. A search on generated images at the real size (9,246 / 828 / 506 at 224 px): 12 VGG16 trials
   of 10 epochs with ASHA's rule (rungs at epochs 3 and 6, top third goes on, by validation ROC
   AUC), K worker processes reused from trial to trial as Ray's reused actors are, each epoch
   validated and checkpointed (weights and Adam's state, as the trainable writes them). No Ray:
   its own per-trial cost is measured on the CPU (benchmarks/README.md, 0.08-0.7 s per trial).
   From it: `trial_fixed_cost_s` (a trial's wall time minus its training time, plus the worker's
   process start and CUDA initialisation shared over 50 trials) and `search_50_minutes`,
   projected from the 12 trials (or from the epochs done when the budget ends first) with the
   arithmetic stored in `search_50_arithmetic`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import selectors
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL_SPLIT = {"train": 9246, "val": 828, "test": 506}  # the real dataset's sizes
ASHA_FRACTION_50 = 0.57  # epochs ASHA trains in a 50-trial search / the full budget (benchmarks/README.md)
PARTS = ["plain", "sharing", "resnet", "compile", "search"]
WORK = Path(os.environ.get("GPU_SPEED_WORK", "/tmp/gpu-speed"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Workers (each its own process, as a Ray trial is)


def _config(args, arch: str, plain: bool, compile_mode: str, device, **hyper):
    from fracture_models.config import TrainConfig

    common = dict(arch=arch, image_size=args.size, batch_size=args.batch_size, weights="none", **hyper)
    if plain:  # the loop before the fast path; torch's default Adam is foreach on CUDA, for-loop on the CPU
        return TrainConfig(**common, sync_every_batch=True, val_batch_factor=1, adam="foreach" if device.type == "cuda" else "for-loop")
    return TrainConfig(**common, compile=compile_mode)


def _random_split(name: str, n: int, size: int, device):
    import torch

    from fracture_models.data import DecodedSplit

    generator = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=generator)
    return DecodedSplit(name, images, torch.arange(n) % 2, [""] * n)


def throughput_worker(args) -> int:
    """Train one trial's loop on random images; report images/s over the window the driver opens."""
    started = time.time()
    import torch

    from fracture_models.engine import build_training, make_loaders, train_one_epoch
    from fracture_models.loader import BatchLoader

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.init()
    config = _config(args, args.arch, args.plain, args.compile, device)
    state = build_training(config, device)
    split = _random_split("train", args.batch_size * args.steps_per_epoch, args.size, device)
    loader, _ = make_loaders(state, split, split)
    ready_at = time.time()
    warm = BatchLoader(split, args.batch_size, device=device, train=True, channels_last=state.channels_last)
    for _ in range(2):  # compile (if any), cuDNN autotuning, CUDA graph recording
        train_one_epoch(state, warm)
    warmed_at = time.time()
    Path(args.ready).write_text("ready")
    while not Path(args.go).exists():
        time.sleep(0.02)
    go = float(Path(args.go).read_text())
    while time.time() < go:
        time.sleep(0.001)
    seen, epoch = 0, 0
    begin = time.perf_counter()
    while True:
        epoch += 1
        loader.set_epoch(epoch)
        train_one_epoch(state, loader)  # the fast path reads its tally once here: the epoch has finished
        seen += loader.num_images
        if time.perf_counter() - begin >= args.seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - begin
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {
        "images_per_s": seen / elapsed,
        "images": seen,
        "seconds": elapsed,
        "start_to_ready_s": ready_at - started,  # imports, CUDA init, model, data on the device
        "warm_up_s": warmed_at - ready_at,  # includes the compile when there is one
        "peak_gpu_memory_gib": peak,
    }
    print(json.dumps(result), flush=True)
    return 0


class StopTrial(Exception):
    """ASHA said stop at this rung."""


def search_worker(args) -> int:
    """A reused worker: trials arrive on stdin, one JSON line each; epochs are reported on stdout
    and each waits for the driver's decision ("go" or "stop"), as Tune's ASHA decides per report."""
    started = time.time()
    import torch

    from fracture_models.data import DecodedSplit
    from fracture_models.engine import build_training, fit, make_checkpoint, make_loaders, save_checkpoint

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.init()
    data = torch.load(args.data, weights_only=True, mmap=True)
    splits = {
        name: DecodedSplit(
            name, data[f"{name}_images"], data[f"{name}_labels"], [""] * len(data[f"{name}_labels"]), fingerprint=Path(args.data).name
        )
        for name in ("train", "val")
    }  # the fingerprint lets the loader keep one copy on the GPU for every trial of this worker
    folder = WORK / "checkpoints" / f"worker{args.worker}"
    print(json.dumps({"event": "ready", "startup_s": time.time() - started}), flush=True)
    for line in sys.stdin:
        trial = json.loads(line)
        if trial.get("quit"):
            break
        begin = time.perf_counter()
        config = _config(args, args.arch, False, args.compile, device, epochs=args.epochs, seed=trial["seed"], **trial["hyperparameters"])
        state = build_training(config, device)
        train_loader, val_loader = make_loaders(state, splits["train"], splits["val"])
        setup_s = time.perf_counter() - begin
        timings = {"train_s": 0.0, "checkpoint_s": 0.0, "epochs": 0}

        def report(row: dict, val: dict, state, timings=timings, trial=trial, n_train=train_loader.num_images) -> None:
            timings["train_s"] += n_train / row["train_images_per_second"]
            t = time.perf_counter()
            save_checkpoint(
                {k: v for k, v in make_checkpoint(state, row).items() if k not in ("optimizer", "scaler")}, folder / "checkpoint.pt"
            )
            save_checkpoint({"optimizer": state.optimizer.state_dict()}, folder / "optimizer.pt")
            timings["checkpoint_s"] += time.perf_counter() - t
            timings["epochs"] = row["epoch"]
            print(json.dumps({"event": "epoch", "trial": trial["trial"], "epoch": row["epoch"], "score": row["val_roc_auc"]}), flush=True)
            if sys.stdin.readline().strip() == "stop":
                raise StopTrial

        try:
            fit(state, train_loader, val_loader, on_epoch_end=report)
        except StopTrial:
            pass
        wall = time.perf_counter() - begin
        del state, train_loader, val_loader
        shutil.rmtree(folder, ignore_errors=True)  # a finished trial's optimiser file goes, as tuning.checkpoints does
        fixed = wall - timings["train_s"]
        print(
            json.dumps({"event": "done", "trial": trial["trial"], "wall_s": wall, "setup_s": setup_s, "fixed_s": fixed, **timings}),
            flush=True,
        )
    return 0


# ---------------------------------------------------------------------------------------------
# Generated data at the real size


def _render(task):
    import numpy as np

    from fracture_models.synthetic import render_radiograph

    seed, labels, size = task
    rng = np.random.default_rng(seed)
    return np.stack([np.round(render_radiograph(rng, size, size, bool(label)) * 255).astype(np.uint8) for label in labels])


def generate_data(path: Path, counts: dict, size: int, processes: int) -> None:
    """Generated radiographs (fracture_models.synthetic) straight to a uint8 tensor file: the
    decoded form a trial receives, without writing and decoding 10,580 image files."""
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np
    import torch

    os.nice(15)  # in the background of the GPU parts: their training processes come first
    record = {}
    with ProcessPoolExecutor(processes) as pool:
        for index, (name, n) in enumerate(counts.items()):
            labels = np.arange(n) % 2
            np.random.default_rng(index).shuffle(labels)
            chunks = [(1000 * index + i, labels[i : i + 64], size) for i in range(0, n, 64)]
            images = np.concatenate(list(pool.map(_render, chunks)))
            record[f"{name}_images"] = torch.from_numpy(images).unsqueeze(1)
            record[f"{name}_labels"] = torch.from_numpy(labels).long()
    tmp = path.with_suffix(".tmp")
    torch.save(record, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The driver


class Run:
    """The budget, the result record, and writing it after every part."""

    def __init__(self, args) -> None:
        self.args = args
        self.start = time.perf_counter()
        self.result = {
            "device": None,
            "vgg16_images_per_s": None,
            "resnet50_images_per_s": None,
            "trial_fixed_cost_s": None,
            "search_50_minutes": None,
            "search_50_projected": None,
            "plain_vgg16_images_per_s": None,
            "settings": {k: v for k, v in vars(args).items() if k != "func"},
            "parts": {},
            "skipped": [],
            "errors": {},
        }

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.result, indent=2, default=str) + "\n")

    def part(self, name: str, needs_s: float, body, reserve_s: float = 0.0) -> object:
        """Run `body()` if `needs_s` fits in what is left, keeping `reserve_s` for later parts;
        record its time or its error."""
        if self.left() < needs_s + reserve_s:
            self.result["skipped"].append(
                f"{name} (needs ~{needs_s:.0f} s + {reserve_s:.0f} s kept for later parts, {self.left():.0f} s left)"
            )
            log(f"skip {name}: needs ~{needs_s:.0f} s, {self.left():.0f} s left")
            self.save()
            return None
        log(f"{name} ({self.left():.0f} s left)")
        began = time.perf_counter()
        try:
            value = body()
        except Exception as error:  # a part that fails leaves the others their time
            self.result["errors"][name] = f"{type(error).__name__}: {error}"
            log(traceback.format_exc())
            value = None
        self.result["parts"].setdefault(name, {})["seconds"] = round(time.perf_counter() - began, 1)
        self.save()
        return value


def _worker_command(args, mode: str, **options) -> list[str]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        mode,
        "--device",
        args.device,
        "--size",
        str(args.size),
        "--batch-size",
        str(args.batch_size),
    ]
    for key, value in options.items():
        if value is True:
            command.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:  # 0 is a value
            command += [f"--{key.replace('_', '-')}", str(value)]
    return command


def measure_sharing(
    run: Run,
    arch: str,
    processes: int,
    *,
    plain: bool = False,
    compile_mode: str = "off",
    env: dict | None = None,
    limit_s: float | None = None,
) -> dict:
    """`processes` trials training at once, each its own process; their images/s over one window."""
    args = run.args
    folder = WORK / f"share-{arch}-{processes}-{int(time.time() * 1000)}"
    folder.mkdir(parents=True)
    go = folder / "go"
    workers = []
    for i in range(processes):
        command = _worker_command(
            args, "throughput", arch=arch, plain=plain, compile=compile_mode, seconds=args.seconds,
            steps_per_epoch=args.steps_per_epoch, ready=folder / f"ready{i}", go=go,
        )  # fmt: skip
        stderr = open(folder / f"worker{i}.log", "w")
        workers.append((subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env), stderr))
    deadline = time.perf_counter() + min(limit_s or math.inf, max(30.0, run.left() - 5))
    while not all((folder / f"ready{i}").exists() for i in range(processes)):
        if any(p.poll() is not None for p, _ in workers) or time.perf_counter() > deadline:
            for p, _ in workers:
                p.kill()
            tails = [(folder / f"worker{i}.log").read_text()[-600:] for i in range(processes)]
            raise RuntimeError(f"a worker ended or stalled before the window: {tails}")
        time.sleep(0.05)
    (folder / "go.tmp").write_text(str(time.time() + 0.5))
    os.replace(folder / "go.tmp", go)  # whole, never half-written
    results = []
    for i, (process, stderr) in enumerate(workers):
        out, _ = process.communicate(timeout=max(10.0, run.left()))
        stderr.close()
        lines = out.strip().splitlines()
        if process.returncode != 0 or not lines:
            raise RuntimeError(f"worker {i} ended with code {process.returncode}: {(folder / f'worker{i}.log').read_text()[-800:]}")
        results.append(json.loads(lines[-1]))
    total = sum(r["images_per_s"] for r in results)
    record = {
        "arch": arch,
        "processes": processes,
        "plain": plain,
        "compile": compile_mode,
        "mps": bool(env and env.get("CUDA_MPS_PIPE_DIRECTORY")),
        "images_per_s": round(total, 1),
        "per_process": [round(r["images_per_s"], 1) for r in results],
        "start_to_ready_s": [round(r["start_to_ready_s"], 2) for r in results],
        "warm_up_s": [round(r["warm_up_s"], 2) for r in results],
        "peak_gpu_memory_gib": [r["peak_gpu_memory_gib"] for r in results],
    }
    log(f"{arch} x{processes} plain={plain} compile={compile_mode} mps={record['mps']}: {total:.1f} images/s")
    return record


def start_mps() -> dict | None:
    """Start a CUDA MPS control daemon for this run; the environment its clients need, or None."""
    if not shutil.which("nvidia-cuda-mps-control"):
        return None
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(WORK / "mps-pipe"), "CUDA_MPS_LOG_DIRECTORY": str(WORK / "mps-log")}
    for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, capture_output=True, text=True, timeout=20)
    return env if done.returncode == 0 else None


def stop_mps(env: dict | None) -> None:
    if env is not None:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", env=env, text=True, timeout=20, capture_output=True)


def sample_hyperparameters(rng: random.Random, arch: str) -> dict:
    """Random points of the search space (tuning.search_space), the baseline first."""
    from tuning.search_space import search_space  # no Ray behind this module

    space = search_space(arch)
    point = {}
    for name, r in space.items():
        if r.integer:
            point[name] = rng.randint(int(r.low), int(r.high))
        elif r.log:
            point[name] = math.exp(rng.uniform(math.log(r.low), math.log(r.high)))
        else:
            point[name] = rng.uniform(r.low, r.high)
    return point


class Asha:
    """Ray's asynchronous successive halving: at a rung, stop when below the (1 - 1/rf) quantile
    of the scores recorded there so far (the first to arrive always goes on)."""

    def __init__(self, rungs: list[int], reduction_factor: int = 3) -> None:
        self.rungs = {r: [] for r in rungs}
        self.rf = reduction_factor

    def decide(self, epoch: int, score: float) -> str:
        if epoch not in self.rungs:
            return "go"
        recorded = self.rungs[epoch]
        cutoff = None
        if recorded:
            import numpy as np

            cutoff = float(np.nanpercentile(recorded, (1 - 1 / self.rf) * 100))
        recorded.append(score)
        return "stop" if cutoff is not None and score < cutoff else "go"


def run_search(run: Run, data: Path, processes: int, compile_mode: str, env: dict | None) -> dict:
    """`trials` trials over `processes` reused workers; stops starting trials when the budget is near."""
    args = run.args
    rng = random.Random(0)
    from tuning.search_space import baseline_point

    queue = [
        {"trial": i, "seed": i, "hyperparameters": baseline_point() if i == 0 else sample_hyperparameters(rng, args.search_arch)}
        for i in range(args.trials)
    ]
    asha = Asha(args.rungs)
    folder = WORK / "search"
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    deadline = began + run.left() - 10
    selector = selectors.DefaultSelector()
    workers = []
    for i in range(processes):
        command = _worker_command(
            args, "search-worker", arch=args.search_arch, compile=compile_mode, epochs=args.epochs, data=data, worker=i
        )
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(folder / f"worker{i}.log", "w"),
            text=True,
            bufsize=1,
            env=env,
        )
        workers.append(process)
        selector.register(process.stdout, selectors.EVENT_READ, i)
    startup, done, epochs, busy, first_step = {}, [], 0, {}, {}
    cut = False
    alive = set(range(processes))
    while alive and not cut:
        if not queue and not busy and len(startup) == processes:
            break
        for key, _ in selector.select(timeout=1.0):
            i = key.data
            line = workers[i].stdout.readline()
            if not line:  # the worker has ended (told to quit, or failed: see its log)
                selector.unregister(key.fileobj)
                busy.pop(i, None)
                alive.discard(i)
                continue
            message = json.loads(line)
            if message["event"] == "ready":
                startup[i] = message["startup_s"]
                first_step.setdefault("ready_s", time.perf_counter() - began)
            elif message["event"] == "epoch":
                epochs += 1
                workers[i].stdin.write(asha.decide(message["epoch"], message["score"]) + "\n")
                continue
            elif message["event"] == "done":
                done.append(message)
                busy.pop(i, None)
            # an idle worker gets the next trial if one is left and the budget still holds a trial
            if i not in busy:
                if queue and time.perf_counter() < deadline:
                    trial = queue.pop(0)
                    busy[i] = trial["trial"]
                    workers[i].stdin.write(json.dumps(trial) + "\n")
                else:
                    workers[i].stdin.write(json.dumps({"quit": True}) + "\n")
        if time.perf_counter() > deadline:
            cut = True
    wall = time.perf_counter() - began
    for process in workers:
        if process.poll() is None:
            process.kill()
    if not done and not epochs:  # epochs without a finished trial still give the projection's rate
        raise RuntimeError(f"no epoch finished; worker 0 said: {(folder / 'worker0.log').read_text()[-800:]}")
    return {
        "processes": processes,
        "compile": compile_mode,
        "wall_s": wall,
        "epochs": epochs,
        "startup_s": startup,
        "trials": done,
        "cut_by_budget": cut,
        "trials_left": len(queue),
    }


def summarise_search(search: dict, planned: int, epochs_per_trial: int, workers: int) -> dict:
    """Fixed cost per trial and the 50-trial time, with the arithmetic written out."""
    trials = search["trials"]
    startup = max(search["startup_s"].values()) if search["startup_s"] else 0.0
    summary = {"trials_finished": len(trials), "epochs_trained": search["epochs"], "wall_s": round(search["wall_s"], 1)}
    if trials:
        warm = sum(t["fixed_s"] for t in trials) / len(trials)
        summary["trial_fixed_cost_s"] = round(warm + startup * workers / 50, 2)
        summary["fixed_cost_arithmetic"] = (
            f"mean over {len(trials)} trials of (trial wall - its training time) = {warm:.2f} s "
            f"(setup {sum(t['setup_s'] for t in trials) / len(trials):.2f} s, checkpoints {sum(t['checkpoint_s'] for t in trials) / len(trials):.2f} s, "
            f"the rest validation and ASHA's answer) + worker start {startup:.2f} s x {workers} workers / 50 trials"
        )
    if search["epochs"] and search["wall_s"] > startup:
        rate = search["epochs"] / (search["wall_s"] - startup)  # trial-epochs per second, everything included
        if len(trials) == planned and not search["cut_by_budget"]:
            minutes = (startup + (search["wall_s"] - startup) * 50 / planned) / 60
            summary["arithmetic"] = (
                f"({startup:.1f} s worker start + ({search['wall_s']:.1f} s - {startup:.1f} s) for {planned} trials x 50/{planned}) / 60 = {minutes:.2f} min"
            )
            epochs_50 = search["epochs"] * 50 / planned
        else:
            epochs_50 = 50 * epochs_per_trial * ASHA_FRACTION_50
            minutes = (startup + epochs_50 / rate) / 60
            summary["arithmetic"] = (
                f"budget ended the search after {search['epochs']} trial-epochs in {search['wall_s']:.1f} s "
                f"({rate:.3f} trial-epochs/s after {startup:.1f} s worker start); 50 trials x {epochs_per_trial} epochs x "
                f"{ASHA_FRACTION_50} (ASHA's share in the 50-trial searches, benchmarks/README.md) = {epochs_50:.0f} trial-epochs; "
                f"({startup:.1f} + {epochs_50:.0f} / {rate:.3f}) / 60 = {minutes:.2f} min"
            )
        summary["search_50_minutes"] = round(minutes, 2)
        summary["search_50_projected"] = planned != 50 or len(trials) != 50
        summary["alternative_by_epochs"] = round((startup + 50 * epochs_per_trial * ASHA_FRACTION_50 / rate) / 60, 2)
    return summary


def drive(args) -> int:
    run = Run(args)
    WORK.mkdir(parents=True, exist_ok=True)
    import torch

    device = torch.device(args.device)
    run.result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    run.result["torch"] = torch.__version__
    run.save()
    counts = {name: max(8, int(n * args.data_scale)) for name, n in REAL_SPLIT.items()}
    data = WORK / f"data-{args.size}px-{counts['train']}.pt"
    generator = None
    if not data.exists() and args.trials and "search" in args.parts:
        generator = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "generate", "--size", str(args.size), "--out", str(data), "--processes", str(args.data_processes), *(f"--{k}={v}" for k, v in counts.items())],
            stderr=open(WORK / "generate.log", "w"),
        )  # fmt: skip
    run.result["search_data"] = {**counts, "image_size": args.size}

    k = args.processes
    plain = "plain" in args.parts and run.part("plain_vgg16", args.part_s, lambda: measure_sharing(run, args.vgg, 1, plain=True))
    if plain:
        run.result["parts"]["plain_vgg16"].update(plain)
        run.result["plain_vgg16_images_per_s"] = plain["images_per_s"]
    candidates = []
    for name, n, env in (("fast_vgg16_x1", 1, None), (f"fast_vgg16_x{k}", k, None)) if "sharing" in args.parts else ():
        record = run.part(name, args.part_s * (1 if n == 1 else 1.5), lambda n=n, env=env: measure_sharing(run, args.vgg, n, env=env))
        if record:
            run.result["parts"][name].update(record)
            candidates.append(record)
    mps = None
    if args.mps and "sharing" in args.parts and device.type == "cuda" and run.left() > args.part_s * 1.5:
        mps = start_mps()
        run.result["mps_started"] = mps is not None
    try:
        if mps is not None:
            record = run.part(f"fast_vgg16_x{k}_mps", args.part_s * 1.5, lambda: measure_sharing(run, args.vgg, k, env=mps))
            if record:
                run.result["parts"][f"fast_vgg16_x{k}_mps"].update(record)
                candidates.append(record)
        best = max(candidates, key=lambda r: r["images_per_s"]) if candidates else {"processes": 1, "mps": False}
        share_env = mps if best.get("mps") else None
        if candidates:
            run.result["vgg16_images_per_s"] = best["images_per_s"]
            run.result["best_sharing"] = {"processes": best["processes"], "mps": best["mps"], "compile": "off"}
        record = "resnet" in args.parts and run.part(
            f"fast_resnet50_x{best['processes']}",
            args.part_s * 1.5,
            lambda: measure_sharing(run, args.resnet, best["processes"], env=share_env),
        )
        if record:
            run.result["parts"][f"fast_resnet50_x{best['processes']}"].update(record)
            run.result["resnet50_images_per_s"] = record["images_per_s"]
        reserve = args.search_reserve_s if args.trials and "search" in args.parts else 0.0
        compiled = "compile" in args.parts and run.part(
            "compiled_vgg16_x1",
            args.compile_s,
            lambda: measure_sharing(run, args.vgg, 1, compile_mode=args.compile_mode, limit_s=args.compile_s),
            reserve_s=reserve,
        )
        compile_mode = "off"
        if compiled:
            run.result["parts"]["compiled_vgg16_x1"].update(compiled)
            single = next((c for c in candidates if c["processes"] == 1), None)
            if single and compiled["images_per_s"] > 1.1 * single["images_per_s"]:
                compile_mode = args.compile_mode  # pays in the search: the search's workers compile from the cache
        if compile_mode != "off" and best["processes"] > 1:
            record = run.part(
                f"compiled_vgg16_x{best['processes']}",
                args.part_s * 2,
                lambda: measure_sharing(run, args.vgg, best["processes"], compile_mode=compile_mode, env=share_env),
                reserve_s=reserve,
            )
            if record:
                run.result["parts"][f"compiled_vgg16_x{best['processes']}"].update(record)
                if record["images_per_s"] > (run.result["vgg16_images_per_s"] or 0):
                    run.result["vgg16_images_per_s"] = record["images_per_s"]
                    run.result.setdefault("best_sharing", {"processes": best["processes"], "mps": best.get("mps", False)})["compile"] = (
                        compile_mode
                    )
        if args.trials and "search" in args.parts:
            if generator is not None:
                run.part("generate_search_data", 5, lambda: generator.wait(timeout=max(1, run.left() - args.search_min_s)))
            search = None
            if data.exists():
                search = run.part("search", args.search_min_s, lambda: run_search(run, data, best["processes"], compile_mode, share_env))
            if search:
                summary = summarise_search(search, args.trials, args.epochs, best["processes"])
                run.result["parts"]["search"].update(summary)
                run.result["search_trials"] = search["trials"]
                run.result["trial_fixed_cost_s"] = summary.get("trial_fixed_cost_s")
                run.result["search_50_minutes"] = summary.get("search_50_minutes")
                run.result["search_50_projected"] = summary.get("search_50_projected")
                run.result["search_50_arithmetic"] = summary.get("arithmetic")
    finally:
        stop_mps(mps)
        if generator is not None and generator.poll() is None:
            generator.kill()
        run.save()
    log(json.dumps({k: run.result[k] for k in list(run.result)[:7]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)

    def common(p):
        p.add_argument("--device", default="cuda")
        p.add_argument("--size", type=int, default=224, help="image size (default: %(default)s)")
        p.add_argument("--batch-size", type=int, default=32, help="per trial (default: %(default)s, the study's)")
        return p

    r = common(sub.add_parser("run", help="the whole measurement (the driver)"))
    r.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_speed.json"))
    r.add_argument("--budget-s", type=float, default=520.0, help="stop starting parts after this (default: %(default)s)")
    r.add_argument("--processes", type=int, default=4, help="trials sharing the GPU (default: %(default)s)")
    r.add_argument("--seconds", type=float, default=12.0, help="measurement window per part (default: %(default)s)")
    r.add_argument("--steps-per-epoch", type=int, default=40)
    r.add_argument("--part-s", type=float, default=40.0, help="time a throughput part is budgeted (default: %(default)s)")
    r.add_argument("--search-reserve-s", type=float, default=150.0, help="kept for the search when deciding on the compile parts")
    r.add_argument("--compile-s", type=float, default=120.0, help="time the compile part is budgeted (default: %(default)s)")
    r.add_argument("--compile-mode", default="reduce-overhead")
    r.add_argument("--mps", action=argparse.BooleanOptionalAction, default=True, help="also measure with CUDA MPS (default: on)")
    r.add_argument("--trials", type=int, default=12, help="trials of the search (default: %(default)s; 50 for the whole search)")
    r.add_argument("--epochs", type=int, default=10)
    r.add_argument("--rungs", type=int, nargs="+", default=[3, 6])
    r.add_argument("--search-min-s", type=float, default=90.0, help="the search runs only with this much left")
    r.add_argument("--data-scale", type=float, default=1.0, help="fraction of the real split sizes (default: %(default)s)")
    r.add_argument("--data-processes", type=int, default=max(1, (os.cpu_count() or 2) - 6))
    r.add_argument("--vgg", default="vgg16")
    r.add_argument("--resnet", default="resnet50")
    r.add_argument("--search-arch", default="vgg16")
    r.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS, help="what to measure (default: all)")
    r.add_argument("--smoke", action="store_true", help="check the plumbing on the CPU in a minute: 32 px, the CNN, tiny data")
    r.set_defaults(func=drive)

    t = common(sub.add_parser("throughput", help="one trial's loop (a worker)"))
    t.add_argument("--arch", required=True)
    t.add_argument("--plain", action="store_true")
    t.add_argument("--compile", default="off")
    t.add_argument("--seconds", type=float, required=True)
    t.add_argument("--steps-per-epoch", type=int, default=40)
    t.add_argument("--ready", required=True)
    t.add_argument("--go", required=True)
    t.set_defaults(func=throughput_worker)

    s = common(sub.add_parser("search-worker", help="a reused search worker"))
    s.add_argument("--arch", required=True)
    s.add_argument("--compile", default="off")
    s.add_argument("--epochs", type=int, required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--worker", type=int, required=True)
    s.set_defaults(func=search_worker)

    g = sub.add_parser("generate", help="the search's generated data")
    g.add_argument("--size", type=int, required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--processes", type=int, default=4)
    for name in REAL_SPLIT:
        g.add_argument(f"--{name}", type=int, required=True)
    g.set_defaults(func=lambda a: generate_data(Path(a.out), {n: getattr(a, n) for n in REAL_SPLIT}, a.size, a.processes) or 0)

    args = parser.parse_args(argv)
    if args.mode == "run" and args.smoke:
        args.device, args.size, args.batch_size = "cpu", 32, 8
        args.vgg = args.resnet = args.search_arch = "cnn"
        args.processes, args.seconds, args.steps_per_epoch, args.part_s, args.compile_s = 2, 2.0, 4, 15.0, 120.0
        args.compile_mode, args.mps = "default", False
        args.trials, args.epochs, args.rungs, args.data_scale, args.data_processes, args.search_min_s = 4, 3, [1, 2], 0.02, 2, 20.0
        args.search_reserve_s = 20.0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
