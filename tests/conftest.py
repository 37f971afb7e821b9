import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def minilm():
    """The real pretrained MiniLM checkpoint (offline, pip-installed with the project)."""
    from aa_jax.models.loader import load_pretrained

    return load_pretrained("minilm")


@pytest.fixture(scope="session")
def glue_dir():
    """The real GLUE Parquet files: $AA_JAX_GLUE_DIR or ../shared/glue beside the repo."""
    path = Path(os.environ.get("AA_JAX_GLUE_DIR", REPO.parent / "shared" / "glue"))
    if not (path / "rte").is_dir():
        pytest.skip("real GLUE data not found; set AA_JAX_GLUE_DIR")
    return path
