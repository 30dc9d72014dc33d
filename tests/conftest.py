"""Session-wide setup, loaded before any test module imports torch's extras.

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. Triton must see
TRITON_INTERPRET=1 before it is first imported, and CompressAI's import already pulls it in
(through torch.jit), so the variable is set here, before any test module imports mambaic.
`auto` never picks the interpreter, so the rest of the suite is unaffected.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
