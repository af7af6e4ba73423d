#!/usr/bin/env python3
"""Loads a run directory's TensorBoard event files with TensorBoard's own reader.

Usage: python scripts/check_tensorboard.py RUN_DIR [--expect TAG ...]

Needs the PyPI `tensorboard` package (for instance in a virtual environment:
`python3 -m venv /tmp/tb && /tmp/tb/bin/pip install tensorboard`). Not part of the
test suite: `tests/tensorboard.rs` reads the files back in Rust; this script checks
that TensorBoard itself (`EventAccumulator`, what `tensorboard --logdir` uses to load
a run) accepts them. It prints every scalar tag with its number of points, first and
last (step, value), every image tag with its size, and exits 1 when no events file is
found, a tag named with --expect is missing, or a step repeats within a tag.
"""

import argparse
import glob
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
    IMAGES,
    SCALARS,
)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--expect", nargs="*", default=[], help="tags that must be present")
    args = ap.parse_args()

    files = sorted(glob.glob(os.path.join(args.run_dir, "*tfevents*")))
    if not files:
        print(f"no events file in {args.run_dir}", file=sys.stderr)
        return 1
    for f in files:
        print(f"file: {os.path.basename(f)} ({os.path.getsize(f)} bytes)")

    # size_guidance 0: keep every event (the default samples scalars down to 10,000
    # and images to 4).
    acc = EventAccumulator(args.run_dir, size_guidance={SCALARS: 0, IMAGES: 0})
    acc.Reload()
    tags = acc.Tags()
    problems = []
    for tag in sorted(tags.get("scalars", [])):
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        if len(set(steps)) != len(steps):
            problems.append(f"{tag}: a step repeats")
        first, last = events[0], events[-1]
        print(
            f"scalar {tag}: {len(events)} points, first (step {first.step}, "
            f"{first.value:.6g}), last (step {last.step}, {last.value:.6g})"
        )
    for tag in sorted(tags.get("images", [])):
        events = acc.Images(tag)
        e = events[-1]
        print(
            f"image {tag}: {len(events)} at step(s) {[x.step for x in events]}, "
            f"{e.width}x{e.height}, {len(e.encoded_image_string)} bytes"
        )
    present = set(tags.get("scalars", [])) | set(tags.get("images", []))
    for t in args.expect:
        if t not in present:
            problems.append(f"expected tag {t} is missing")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
