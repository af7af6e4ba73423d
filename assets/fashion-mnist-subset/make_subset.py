#!/usr/bin/env python3
"""Rebuild the embedded Fashion-MNIST subset from the original IDX .gz files.

Usage: make_subset.py SRC_DIR OUT_DIR
SRC_DIR holds train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (Debian package
dataset-fashion-mnist, /usr/share/datasets/fashion-mnist/).
Keeps the first PER_CLASS images of each class in file order, preserving that order.
Output gzip streams use mtime 0 and no file name, so the bytes are reproducible.
"""
import gzip
import struct
import sys

SPLITS = [("train", "train", 1000), ("t10k", "t10k", 200)]


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    got, n = struct.unpack(">II", data[:8])
    assert got == magic, (path, got)
    return data, n


def write_gz(path, payload):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as g:
            g.write(payload)


def main(src, out):
    for name, out_name, per_class in SPLITS:
        img, n = read_idx(f"{src}/{name}-images-idx3-ubyte.gz", 0x00000803)
        lab, m = read_idx(f"{src}/{name}-labels-idx1-ubyte.gz", 0x00000801)
        assert n == m
        rows, cols = struct.unpack(">II", img[8:16])
        size = rows * cols
        counts = [0] * 10
        keep = []
        for i in range(n):
            c = lab[8 + i]
            if counts[c] < per_class:
                counts[c] += 1
                keep.append(i)
        assert counts == [per_class] * 10, counts
        k = len(keep)
        images = struct.pack(">IIII", 0x00000803, k, rows, cols) + b"".join(
            img[16 + i * size:16 + (i + 1) * size] for i in keep)
        labels = struct.pack(">II", 0x00000801, k) + bytes(lab[8 + i] for i in keep)
        write_gz(f"{out}/{out_name}-images-idx3-ubyte.gz", images)
        write_gz(f"{out}/{out_name}-labels-idx1-ubyte.gz", labels)
        print(name, k, "images; last source index kept:", keep[-1])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
