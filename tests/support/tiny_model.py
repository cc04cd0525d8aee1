"""Build a few-MB random-weight Qwen3 model that a real vLLM server loads on the CPU.

The integration tests need a real vLLM server, and this machine can fetch no weights
from a hub, so the model is made here: a deterministic (fixed seed) two-layer Qwen3
with a byte-level BPE tokenizer trained on generated text and a ChatML chat template,
so /v1/chat/completions works. Its answers are noise; what the tests exercise is the
server: the OpenAI API, streaming, usage, limits and /metrics.

The build runs under .venv-vllm's python (torch, transformers, tokenizers):
``.venv-vllm/bin/python tests/support/tiny_model.py`` prints the model directory. The
path helpers import only the standard library, so the light project venv imports this
module too, to find the model without starting torch.

The model lives in ``.cache/tiny-qwen3/<key>/``, where the key hashes this file and
requirements-vllm.txt: a change to the builder or to the library versions that write
the files yields a new directory, and an unchanged one is never rebuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = REPO_ROOT / ".cache" / "tiny-qwen3"
REQUIREMENTS = REPO_ROOT / "requirements-vllm.txt"

SERVED_MODEL = "tiny-qwen3"
SEED = 20240601
VOCAB_SIZE = 2048
MAX_POSITION_EMBEDDINGS = 4096
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# Qwen's ChatML layout without tool calls; vLLM renders it for /v1/chat/completions.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

_WORDS = [
    "gpu",
    "fleet",
    "cost",
    "host",
    "agent",
    "server",
    "model",
    "token",
    "request",
    "latency",
    "budget",
    "hour",
    "price",
    "spot",
    "reserved",
    "idle",
    "busy",
    "memory",
    "power",
    "watt",
    "cluster",
    "node",
    "queue",
    "batch",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "that",
    "it",
    "be",
    "are",
    "was",
    "hello",
    "world",
    "please",
    "answer",
    "question",
    "short",
    "long",
    "fast",
    "slow",
    "cheap",
    "dear",
    "start",
    "stop",
    "scale",
    "up",
    "down",
    "limit",
    "quota",
    "alert",
    "report",
    "daily",
    "weekly",
    "monthly",
]


def build_key() -> str:
    """Hash of the builder and the pinned libraries: the cache address of one build."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    if REQUIREMENTS.is_file():
        digest.update(REQUIREMENTS.read_bytes())
    return digest.hexdigest()[:16]


def model_dir(cache_root: Path = CACHE_ROOT) -> Path:
    """Where the current builder's model is (or will be) stored."""
    return cache_root / build_key()


def _corpus(rng: random.Random, lines: int = 4000) -> Iterator[str]:
    """Generated text for the tokenizer: words, numbers, punctuation and chat turns."""
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 16))]
        words.append(str(rng.randint(0, 99999)))
        sentence = " ".join(words) + rng.choice((".", "?", "!", ",", ":"))
        role = rng.choice(("system", "user", "assistant"))
        yield f"{IM_START}{role}\n{sentence.capitalize()}{IM_END}\n"


def _build_tokenizer(out: Path, rng: random.Random) -> tuple[int, dict[str, int]]:
    """Train and save a byte-level BPE tokenizer; return its size and special ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(rng), trainer=trainer)

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=MAX_POSITION_EMBEDDINGS,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(out)
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    return tokenizer.get_vocab_size(), ids


def _build_model(out: Path, vocab_size: int, ids: dict[str, int]) -> None:
    """Save a randomly initialised Qwen3 sized for the CPU backend (head_dim 64)."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        # An untied random head spreads greedy picks over the vocabulary; a tied one
        # keeps echoing the prompt's last token (a newline) and yields blank text.
        tie_word_embeddings=False,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
    )
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    # Either token ends a reply, as in Qwen's own generation_config.json.
    GenerationConfig(
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
        pad_token_id=ids[ENDOFTEXT],
    ).save_pretrained(out)


def build(cache_root: Path = CACHE_ROOT) -> Path:
    """Build the model unless this builder's directory exists; return that directory.

    Built in a scratch directory beside the target and renamed into place, so a
    crashed build leaves nothing that looks finished and concurrent builders agree.
    """
    target = model_dir(cache_root)
    if target.is_dir():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_root))
    try:
        rng = random.Random(SEED)
        vocab_size, ids = _build_tokenizer(scratch, rng)
        _build_model(scratch, vocab_size, ids)
        os.rename(scratch, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """Build (or find) the model and print its directory on the last line of stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-root", type=Path, default=CACHE_ROOT)
    args = parser.parse_args(argv)
    print(build(args.cache_root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
