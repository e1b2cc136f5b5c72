"""A character-level tokenizer, for the `micro` model: one token per character of one sentence.

GPT-2's 50257-token vocabulary makes 98 % of even a small model's parameters the embedding and
the output head, and every logit row 50257 numbers long. The micro model reads one short
sentence, character by character: its vocabulary is that sentence's 17 distinct characters, so
a row of logits, a row of the embedding and every gradient fit on one printed line.

    >>> tok = micro_tokenizer()
    >>> tok.encode("Every")
    [2, 14, 5, 10, 16]
    >>> tok.decode([2, 14, 5, 10, 16])
    'Every'

The interface is the part of tiktoken's `Encoding` this package uses (`encode` with
`allowed_special`, `decode`, `decode_single_token_bytes`, `n_vocab`), so the data loader, the
training loop and generation take either tokenizer.
"""

# The book's start context, 30 characters. Repeated with a space, the text has period 31, prime to
# the context length 8: windows taken every 8 characters start at every position of the sentence.
MICRO_SENTENCE = "Every effort moves you onward."
MICRO_REPEATS = 10                                   # pretrain.py's default micro text: the sentence 10 times


class CharTokenizer:
    """Token i is the i-th character of `alphabet` (sorted, each once)."""

    def __init__(self, alphabet, name="char"):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"the alphabet {alphabet!r} repeats a character")
        self.alphabet = "".join(alphabet)
        self.name = name
        self.n_vocab = len(self.alphabet)
        self._ids = {ch: i for i, ch in enumerate(self.alphabet)}

    @classmethod
    def from_text(cls, text, name="char"):
        """The tokenizer whose vocabulary is the distinct characters of `text`, sorted."""
        return cls(sorted(set(text)), name=name)

    def encode(self, text, allowed_special=()):      # allowed_special: tiktoken's signature; no specials here
        ids = []
        for position, ch in enumerate(text):
            i = self._ids.get(ch)
            if i is None:
                raise ValueError(f"character {ch!r} at position {position} is not in the {self.name} "
                                 f"tokenizer's {self.n_vocab} characters {self.alphabet!r}")
            ids.append(i)
        return ids

    def decode(self, ids):
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.n_vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the {self.name} tokenizer's 0..{self.n_vocab - 1}")
        return "".join(self.alphabet[i] for i in ids)

    def decode_single_token_bytes(self, token):
        return self.decode([token]).encode("utf-8")

    def __repr__(self):
        return f"CharTokenizer({self.alphabet!r})"


def micro_tokenizer():
    """The micro model's tokenizer: the characters of MICRO_SENTENCE (17 of them)."""
    return CharTokenizer.from_text(MICRO_SENTENCE, name="micro")


def micro_text(repeats=MICRO_REPEATS):
    """The micro model's training text: the sentence, `repeats` times, separated by spaces (the
    90 % / 10 % split then leaves whole windows on both sides; both see the same sentence)."""
    return " ".join([MICRO_SENTENCE] * repeats)
