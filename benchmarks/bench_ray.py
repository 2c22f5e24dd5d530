"""Ray sharding benchmark (issue: beyond one machine). Prints, from one run on this machine:
2 local Ray workers against 1 process on the same prompt set (the ratio), and the overhead of sharding with
1 worker against 1 process. Method: `predictions` (swap in any registered per-prompt method with --method).

Run: .venv/bin/python benchmarks/bench_ray.py [--prompts 512] [--method predictions]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_capture import model_dir, prompts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--method", default="predictions")
    parser.add_argument("--shard-size", type=int, default=64)
    args = parser.parse_args()
    import ray

    import interp
    from interp.methods.registry import require_method
    from interp.runs.distributed import run_on_ray

    path = model_dir()
    ps = [{"id": str(i), "prompt": p} for i, p in enumerate(prompts(args.prompts))]
    fn = require_method(args.method).function
    model = interp.load_model(path, device="cpu")
    t = time.perf_counter()
    single = fn(model, ps)
    one_process = time.perf_counter() - t
    timings = {}
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            run_on_ray(args.method, path, ps[: args.shard_size], workers=workers, shard_size=args.shard_size,
                       progress=False)  # start the workers' processes once, outside the timing
            t = time.perf_counter()
            res = run_on_ray(args.method, path, ps, workers=workers, shard_size=args.shard_size, progress=False)
            timings[workers] = time.perf_counter() - t
        finally:
            ray.shutdown()
        assert len(res.table) == len(single.table)
    print(f"model: {path}; {args.prompts} prompts; method {args.method}; shards of {args.shard_size}")
    print(f"1 process: {one_process:.1f} s; ray 1 worker: {timings[1]:.1f} s; ray 2 workers: {timings[2]:.1f} s "
          "(each ray time includes loading the model in every worker)")
    print(f"speed-up of 2 workers over 1 process: {one_process / timings[2]:.2f}x; "
          f"sharding overhead at 1 worker: {timings[1] / one_process:.2f}x")


if __name__ == "__main__":
    main()
