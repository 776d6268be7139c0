"""Build the bundled sample dataset and its tokenizer (``framework/data/sample/``).

The sample data is a set of small synthetic instruction/response tasks (arithmetic, word reversal,
uppercasing, sorting, capitals, letter counts, opposites, numbers in words, repetition, ...) that a
tiny random-init model can start to learn within a few dozen optimizer steps, so that eval loss
visibly falls in the demo and in the tests. Everything is generated from a fixed seed, with no
network access, so re-running this program reproduces the shipped files byte for byte.

Outputs, under ``--out`` (default: the ``sample`` folder next to this file):

* ``train.jsonl``: one JSON object per line with the string fields ``instruction``, ``input``
  (often empty) and ``response``.
* ``tokenizer/``: a byte-level BPE tokenizer trained on that data with the ``tokenizers`` library,
  2048 tokens including the special tokens ``<pad>``, ``<s>``, ``</s>`` and ``<unk>``, saved with
  ``transformers.PreTrainedTokenizerFast.save_pretrained`` so that ``AutoTokenizer.from_pretrained``
  loads it offline. It adds no special tokens when encoding (the framework appends eos itself).

Usage::

    python -m framework.data.build_sample [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

SEED = 1234
VOCAB_SIZE = 2048
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
DEFAULT_OUT = Path(__file__).resolve().parent / "sample"

# The framework's default prompt templates (DatasetConfig.template / input_template); the tokenizer is
# trained on rendered examples so that the template text compresses well.
TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
INPUT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Input:\n{input}\n\n### Response:\n"

Example = dict[str, str]


def _words(text: str) -> list[str]:
    """Split a whitespace-separated word list (easier to read and edit than a long list literal)."""
    return text.split()


CAPITALS: list[tuple[str, str]] = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Australia", "Canberra"),
    ("Russia", "Moscow"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Ireland", "Dublin"),
    ("Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"),
    ("Hungary", "Budapest"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"),
    ("South Korea", "Seoul"),
    ("Iran", "Tehran"),
    ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"),
    ("Colombia", "Bogota"),
    ("Cuba", "Havana"),
    ("New Zealand", "Wellington"),
]

OPPOSITES: list[tuple[str, str]] = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("up", "down"),
    ("left", "right"),
    ("day", "night"),
    ("happy", "sad"),
    ("open", "closed"),
    ("light", "dark"),
    ("old", "new"),
    ("early", "late"),
    ("full", "empty"),
    ("hard", "soft"),
    ("high", "low"),
    ("long", "short"),
    ("wet", "dry"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("loud", "quiet"),
    ("clean", "dirty"),
    ("thick", "thin"),
    ("near", "far"),
    ("push", "pull"),
    ("buy", "sell"),
    ("win", "lose"),
    ("first", "last"),
    ("inside", "outside"),
    ("true", "false"),
    ("begin", "end"),
    ("laugh", "cry"),
    ("north", "south"),
    ("cheap", "expensive"),
    ("easy", "difficult"),
    ("safe", "dangerous"),
    ("sweet", "sour"),
    ("above", "below"),
    ("always", "never"),
    ("friend", "enemy"),
    ("question", "answer"),
    ("summer", "winter"),
]

WORDS: list[str] = _words(
    "apple banana cherry garden window river mountain forest ocean island bridge castle candle "
    "pencil paper letter silver golden yellow purple orange green blue red black white brown "
    "table chair spoon plate bottle basket pocket jacket button ribbon rocket planet comet star "
    "moon sun cloud rain snow storm thunder breeze summer winter spring autumn morning evening "
    "kitten puppy rabbit turtle dolphin tiger lion zebra monkey parrot eagle falcon salmon "
    "bread butter cheese honey sugar pepper tomato potato carrot onion lemon mango melon grape "
    "music piano guitar violin drum song dance story poem book page chapter word sentence "
    "friend teacher doctor farmer baker driver pilot sailor artist writer singer player "
    "house school market office library museum station harbor village city valley desert "
    "little quick bright quiet gentle clever happy brave calm simple "
    "blanket pillow mirror ladder hammer needle thread wallet helmet saddle anchor compass lantern "
    "kettle teapot cupboard drawer carpet curtain chimney balcony cellar attic fountain statue "
    "meadow prairie canyon glacier volcano lagoon marsh orchard vineyard pasture cottage palace "
    "penguin giraffe elephant squirrel hedgehog beaver otter walrus pelican flamingo octopus lobster "
    "raspberry blueberry walnut almond pumpkin cabbage lettuce spinach noodle pancake biscuit muffin "
    "journey adventure mystery puzzle riddle secret treasure festival holiday picnic concert parade "
    "whisper giggle wander gather borrow remember imagine discover explore whistle juggle sparkle "
    "crystal marble copper bronze velvet cotton leather feather pebble shadow rainbow twilight "
    "engineer gardener carpenter plumber dentist nurse captain sculptor inventor librarian merchant "
    "bicycle tractor wagon canoe sailboat airplane subway tunnel highway airport factory hospital "
    "cinnamon vanilla ginger saffron mustard pickle yogurt custard waffle pretzel popcorn sandwich"
)

PHRASES: list[str] = [
    "good morning",
    "thank you",
    "hello world",
    "see you soon",
    "well done",
    "keep going",
    "one more time",
    "happy birthday",
    "stay calm",
    "try again",
    "all is well",
    "nice to meet you",
    "good night",
    "let us begin",
    "almost there",
    "be kind",
]

DAYS = _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
MONTHS = _words("January February March April May June July August September October November December")

ONES = _words("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen")
ONES += _words("sixteen seventeen eighteen nineteen")
TENS = _words("_ _ twenty thirty forty fifty sixty seventy eighty ninety")


def number_to_words(n: int) -> str:
    """Spell a number in 0..9999 in English words ("forty-seven", "three hundred and five")."""
    if not 0 <= n <= 9999:
        raise ValueError(f"out of range: {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens] + ("" if ones == 0 else "-" + ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return ONES[hundreds] + " hundred" + ("" if rest == 0 else " and " + number_to_words(rest))
    thousands, rest = divmod(n, 1000)
    head = ONES[thousands] + " thousand"
    if rest == 0:
        return head
    return head + (" and " if rest < 100 else " ") + number_to_words(rest)


def _ex(instruction: str, response: str, input_: str = "") -> Example:
    return {"instruction": instruction, "input": input_, "response": response}


def gen_add(rng: random.Random) -> Example:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    template = rng.choice(["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."])
    return _ex(template.format(a=a, b=b), f"{a} plus {b} is {a + b}.")


def gen_sub(rng: random.Random) -> Example:
    a = rng.randint(0, 60)
    b = rng.randint(0, a)
    template = rng.choice(["What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}."])
    return _ex(template.format(a=a, b=b), f"{a} minus {b} is {a - b}.")


def gen_mul(rng: random.Random) -> Example:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    template = rng.choice(["What is {a} times {b}?", "Multiply {a} by {b}."])
    return _ex(template.format(a=a, b=b), f"{a} times {b} is {a * b}.")


def gen_reverse(rng: random.Random) -> Example:
    words = rng.sample(WORDS, rng.randint(3, 6))
    instruction = rng.choice(["Reverse the order of these words.", "Write these words in reverse order."])
    return _ex(instruction, " ".join(reversed(words)), " ".join(words))


def gen_upper(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    if rng.random() < 0.5:
        return _ex("Write the word in uppercase.", word.upper(), word)
    return _ex(f'Write "{word}" in capital letters.', f'"{word}" in capital letters is "{word.upper()}".')


def gen_sort(rng: random.Random) -> Example:
    nums = rng.sample(range(1, 100), rng.randint(3, 6))
    if rng.random() < 0.7:
        return _ex(
            "Sort these numbers from smallest to largest.",
            ", ".join(str(n) for n in sorted(nums)),
            ", ".join(str(n) for n in nums),
        )
    return _ex(
        "Sort these numbers from largest to smallest.",
        ", ".join(str(n) for n in sorted(nums, reverse=True)),
        ", ".join(str(n) for n in nums),
    )


def gen_capital(rng: random.Random) -> Example:
    country, capital = rng.choice(CAPITALS)
    template = rng.choice(
        ["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"]
    )
    return _ex(template.format(c=country), f"The capital of {country} is {capital}.")


def gen_count_letters(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    if rng.random() < 0.6:
        return _ex(
            f'How many letters are in the word "{word}"?', f'The word "{word}" has {len(word)} letters.'
        )
    letter = rng.choice(sorted(set(word)))
    count = word.count(letter)
    noun = "time" if count == 1 else "times"
    return _ex(
        f'How many times does the letter "{letter}" appear in "{word}"?',
        f'The letter "{letter}" appears {count} {noun} in "{word}".',
    )


def gen_opposite(rng: random.Random) -> Example:
    a, b = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    template = rng.choice(["What is the opposite of {w}?", "Give the opposite of the word {w}."])
    return _ex(template.format(w=a), f"The opposite of {a} is {b}.")


def gen_number_words(rng: random.Random) -> Example:
    n = rng.randint(0, 999) if rng.random() < 0.85 else rng.randint(1000, 9999)
    if rng.random() < 0.5:
        return _ex(f"Write {n} in words.", number_to_words(n))
    return _ex("Write this number in words.", f"{n} is {number_to_words(n)}.", str(n))


def gen_repeat(rng: random.Random) -> Example:
    phrase = rng.choice(PHRASES)
    n = rng.randint(2, 5)
    return _ex(f"Repeat the phrase {n} times.", " ".join([phrase] * n), phrase)


def gen_compare(rng: random.Random) -> Example:
    a, b = rng.sample(range(0, 100), 2)
    if rng.random() < 0.5:
        return _ex(f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger than {min(a, b)}.")
    return _ex(f"Which is smaller, {a} or {b}?", f"{min(a, b)} is smaller than {max(a, b)}.")


def gen_first_last(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    if rng.random() < 0.5:
        return _ex(f'What is the first letter of "{word}"?', f'The first letter of "{word}" is "{word[0]}".')
    return _ex(f'What is the last letter of "{word}"?', f'The last letter of "{word}" is "{word[-1]}".')


def gen_spell(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    return _ex("Spell the word letter by letter.", "-".join(word.upper()), word)


def gen_calendar(rng: random.Random) -> Example:
    names, kind = (DAYS, "day") if rng.random() < 0.4 else (MONTHS, "month")
    i = rng.randrange(len(names))
    if rng.random() < 0.5:
        after = names[(i + 1) % len(names)]
        return _ex(f"What {kind} comes after {names[i]}?", f"The {kind} after {names[i]} is {after}.")
    before = names[i - 1]
    return _ex(f"What {kind} comes before {names[i]}?", f"The {kind} before {names[i]} is {before}.")


def gen_count_range(rng: random.Random) -> Example:
    """A longer response: counting over a range (up to a few hundred characters)."""
    start = rng.randint(1, 30)
    stop = start + rng.randint(20, 60)
    return _ex(f"Count from {start} to {stop}.", ", ".join(str(n) for n in range(start, stop + 1)) + ".")


def gen_capital_list(rng: random.Random) -> Example:
    """A longer response: several capitals at once, one per line."""
    pairs = rng.sample(CAPITALS, rng.randint(6, 10))
    return _ex(
        "Give the capital of each of these countries, one per line.",
        "\n".join(f"{country}: {capital}" for country, capital in pairs),
        ", ".join(country for country, _ in pairs),
    )


# (generator, number of examples); short tasks dominate, a handful of long ones at the end.
TASKS: list[tuple[Callable[[random.Random], Example], int]] = [
    (gen_add, 70),
    (gen_sub, 60),
    (gen_mul, 40),
    (gen_reverse, 60),
    (gen_upper, 50),
    (gen_sort, 60),
    (gen_capital, 60),
    (gen_count_letters, 50),
    (gen_opposite, 60),
    (gen_number_words, 70),
    (gen_repeat, 40),
    (gen_compare, 40),
    (gen_first_last, 40),
    (gen_spell, 40),
    (gen_calendar, 30),
    (gen_count_range, 6),
    (gen_capital_list, 6),
]


def build_examples(seed: int = SEED) -> list[Example]:
    """All sample examples, deterministic for a given seed, with unique (instruction, input) pairs."""
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    examples: list[Example] = []
    for gen, count in TASKS:
        made, attempts = 0, 0
        while made < count:
            attempts += 1
            if attempts > 100 * count:
                raise RuntimeError(f"{gen.__name__}: cannot make {count} unique examples")
            ex = gen(rng)
            key = (ex["instruction"], ex["input"])
            if key in seen:
                continue
            seen.add(key)
            examples.append(ex)
            made += 1
    rng.shuffle(examples)
    return examples


def render(ex: Example) -> str:
    """One example as the framework's default template renders it, followed by its response."""
    if ex["input"]:
        prompt = INPUT_TEMPLATE.format(prompt=ex["instruction"], input=ex["input"])
    else:
        prompt = TEMPLATE.format(prompt=ex["instruction"])
    return prompt + ex["response"]


def write_jsonl(examples: list[Example], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for ex in examples:
            f.write(json.dumps(ex, ensure_ascii=True) + "\n")


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = VOCAB_SIZE) -> None:
    """Train a byte-level BPE tokenizer on ``texts`` and save it for ``AutoTokenizer`` in ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def batches() -> Iterator[list[str]]:
        for i in range(0, len(texts), 256):
            yield texts[i : i + 256]

    tok.train_from_iterator(batches(), trainer=trainer, length=len(texts))
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"trained vocab has {tok.get_vocab_size()} tokens, wanted {vocab_size}")

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=1024,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        if stale.is_file():
            stale.unlink()
    hf_tok.save_pretrained(str(out_dir))


def build(out: Path = DEFAULT_OUT, seed: int = SEED) -> list[Example]:
    """Write ``train.jsonl`` and ``tokenizer/`` under ``out``; returns the examples written."""
    examples = build_examples(seed)
    write_jsonl(examples, out / "train.jsonl")
    train_tokenizer([render(ex) for ex in examples], out / "tokenizer")
    return examples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})"
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed (default: {SEED})")
    args = parser.parse_args(argv)
    # Training is multi-threaded; results do not depend on it, but keep logs quiet.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    examples = build(args.out, args.seed)
    print(f"wrote {len(examples)} examples and a {VOCAB_SIZE}-token tokenizer to {args.out}")


if __name__ == "__main__":
    main()
