"""Coverage-guided fuzzing of the whole .mic decode path with atheris (libFuzzer), on demand.

    pip install atheris            # or: pip install -e ".[fuzz]"
    python tests/codec/fuzz_atheris.py -atheris_runs=20000 [CORPUS_DIR]

The seeds are real .mic files of scikit-image photographs coded by a tiny model (written to
CORPUS_DIR, default /tmp/mambaic-fuzz-corpus, which libFuzzer then grows). mambaic's own modules
are instrumented for coverage; torch and CompressAI are not. Inputs ending in a zero byte have
that byte dropped and their CRCs recomputed, so mutations also reach the checks behind them. Each input must end in a decoded
image (bit for bit a seed's) or one of the documented errors (MicFormatError, ModelMismatchError, LatentMismatchError,
ImageTooLargeError); anything else stops the campaign with the input saved as crash-*. At the
end it prints the number of inputs run and how each ended. The CI runs the hypothesis tests of
test_fuzz.py instead (a few thousand cases).
"""

import collections
import struct
import sys
import warnings
import zlib
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["mambaic"]):
    import mambaic
    from mambaic.codec import (
        ImageTooLargeError,
        LatentMismatchError,
        MicFormatError,
        ModelMismatchError,
        decode_image,
        encode_image,
    )

import torch  # noqa: E402

DOCUMENTED = (MicFormatError, ModelMismatchError, LatentMismatchError, ImageTooLargeError)
TINY = dict(N=8, M=20, depths=(1, 1, 1, 1), z_channels=8)
outcomes = collections.Counter()


def with_valid_crcs(data: bytes) -> bytes:
    """``data`` with its payload and header CRCs recomputed where the fields can be found: the
    fuzzer's mutations then reach the checks behind the CRCs and the entropy decoder."""
    if len(data) < 80 or data[:4] != b"MBIC":
        return data
    d = bytearray(data)
    header_size = struct.unpack_from("<H", d, 6)[0]
    if not 80 <= header_size <= len(d):
        return data
    struct.pack_into("<I", d, 72, zlib.crc32(bytes(d[header_size:])))
    struct.pack_into("<I", d, header_size - 4, zlib.crc32(bytes(d[: header_size - 4])))
    return bytes(d)


def seed_corpus(model, folder: Path) -> dict:
    """Write the seeds; returns their decoded images."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for name, h, w in (("astronaut", 41, 57), ("coffee", 100, 120), ("chelsea", 1, 1)):
        rgb = getattr(data, name)()[:h, :w]
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
        encoded = encode_image(model, x)
        (folder / f"seed_{name}.mic").write_bytes(encoded.data)
        images.append(decode_image(model, encoded.data)[0])
    return images


def main() -> None:
    torch.set_num_threads(1)
    model = mambaic.random_model(0, **TINY)
    model.update()
    args = [a for a in sys.argv[1:] if a.startswith("-")]
    folders = [a for a in sys.argv[1:] if not a.startswith("-")] or ["/tmp/mambaic-fuzz-corpus"]
    originals = seed_corpus(model, Path(folders[0]))

    def one_input(data: bytes) -> None:
        if data[-1:] == b"\x00":  # about one input in two after mutation: CRCs made valid
            data = with_valid_crcs(data[:-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                x_hat, _ = decode_image(model, data, "fuzz.mic", max_pixels=1 << 20)
            except DOCUMENTED as exc:
                outcomes[type(exc).__name__] += 1
                return
        # decoded: the latent checksums passed, so the image must be a seed's, bit for bit
        if not any(x_hat.shape == img.shape and torch.equal(x_hat, img) for img in originals):
            raise AssertionError("a changed file decoded to an image that is no seed's")
        outcomes["decoded"] += 1

    atheris.Setup([sys.argv[0], *args, *folders], one_input)
    try:
        atheris.Fuzz()
    finally:
        print(f"\n{sum(outcomes.values())} inputs: {dict(outcomes)}", flush=True)


if __name__ == "__main__":
    main()
