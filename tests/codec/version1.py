"""The version 1 test file and whether this machine can decode it.

Version 1 encoders hashed the entropy tables that CompressAI's ``update()`` computes in float32,
whose last bits depend on the machine's math library (the file was written on an AMD EPYC CPU;
an Intel Xeon's float32 update gives other tables). Where the tables differ the decoder must
refuse the file with WeightsMismatchError; the decode itself can be tested only where they agree.
"""

from pathlib import Path

import pytest
from compressai.models import CompressionModel

import mambaic
from mambaic.codec import read_mic
from mambaic.codec.fingerprint import legacy_fingerprint

V1_FILE = Path(__file__).resolve().parents[1] / "expected" / "astronaut_41x57_v1.mic"
V1_SEED = 3


def v1_tables_reproduce(config: dict) -> bool:
    """Whether this machine's float32 update() gives the version 1 encoder's tables."""
    model = mambaic.random_model(V1_SEED, **config)
    CompressionModel.update(model, force=True)
    return legacy_fingerprint(model) == read_mic(V1_FILE.read_bytes()).fingerprint


def skip_unless_v1_tables_reproduce(config: dict) -> None:
    """Skip, saying why, where this machine's float32 update() does not give the encoder's tables."""
    if not v1_tables_reproduce(config):
        pytest.skip("this machine's float32 CompressAI update() gives other entropy tables than the version 1 "
                    "encoder's machine did, so the file is refused here (tested by test_version_1_file_refused_"
                    "where_its_tables_differ); the decode is tested where they agree")
