"""Small task files in the formats llama-perplexity reads, written by the tests (no dataset downloads).

The items are in the style of the real sets: HellaSwag's "activity: context" with one plausible ending and
three that drift, WinoGrande's sentence pairs whose blank takes one of two names or things.
"""

from __future__ import annotations

import struct
from pathlib import Path

HELLASWAG = [
    ("Making a sandwich: A man lays two slices of bread on a cutting board. He", 1,
     ["throws the bread into the river and walks away.", "spreads butter on both slices with a knife.",
      "starts to paint the bread with a blue brush.", "puts the board on his head and dances."]),
    ("Washing dishes: A woman fills the sink with hot soapy water. She", 0,
     ["scrubs a plate with a sponge and rinses it.", "drinks the water from the sink.",
      "puts the sink in the oven.", "reads a newspaper to the plates."]),
    ("Running a marathon: The runners line up at the start. The gun fires and they", 2,
     ["sit down and eat lunch.", "go home to sleep.", "begin running down the street.",
      "climb a tree near the road."]),
    ("Brushing teeth: A boy puts toothpaste on his toothbrush. He", 3,
     ["eats the toothbrush.", "throws the toothpaste at the mirror.", "paints the wall with it.",
      "brushes his teeth in small circles."]),
    ("Planting a tree: A gardener digs a deep hole in the yard. She", 0,
     ["places the young tree in the hole and fills it with soil.", "jumps in the hole and falls asleep.",
      "fills the hole with milk.", "throws the shovel over the house."]),
    ("Riding a bike: A girl puts on her helmet and gets on her bike. She", 1,
     ["eats her helmet.", "pedals down the street toward the park.", "flies into the sky.",
      "turns the bike into a boat."]),
    ("Baking cookies: A man mixes flour, sugar and eggs in a bowl. He", 2,
     ["pours the mix into his shoes.", "throws the bowl out the window.",
      "scoops the dough onto a tray and puts it in the oven.", "sings to the eggs until they hatch."]),
    ("Changing a tire: A man loosens the nuts on the flat tire. He", 3,
     ["eats the nuts.", "drives away on the flat tire.", "paints the tire green.",
      "lifts the car with a jack and pulls the wheel off."]),
    ("Playing the guitar: A woman sits on a stool holding a guitar. She", 0,
     ["strums the strings and begins to sing.", "breaks the guitar in half.", "uses the guitar as a boat.",
      "puts the guitar in the fridge."]),
    ("Walking the dog: A man clips a leash to his dog's collar. They", 1,
     ["fly to the moon.", "walk out the door and down the sidewalk.", "sit in the bath.",
      "build a house out of leaves."]),
    ("Making coffee: A woman pours water into the coffee maker. She", 2,
     ["drinks the water and leaves.", "throws the coffee maker away.",
      "adds ground coffee to the filter and presses the button.", "waters the plants with it."]),
    ("Skiing: A skier stands at the top of the snowy slope. He", 3,
     ["takes off his skis and eats them.", "lies down and sleeps in the snow for days.",
      "climbs back into the chair lift.", "pushes off with his poles and glides down the hill."]),
    ("Ironing clothes: A man lays a wrinkled shirt on the ironing board. He", 0,
     ["presses the hot iron over the fabric.", "cuts the shirt into pieces.", "wears the ironing board.",
      "throws the iron at the wall."]),
    ("Swimming: A girl dives into the pool. She", 1,
     ["walks on the water.", "swims to the other end with strong strokes.", "stays dry.",
      "reads a book at the bottom."]),
    ("Painting a fence: A boy dips a brush into a can of white paint. He", 2,
     ["drinks the paint.", "paints his dog.", "spreads the paint along the wooden boards.",
      "buries the can in the garden."]),
    ("Fishing: A man casts his line into the lake. He", 3,
     ["jumps into the lake after it.", "throws his rod away.", "falls asleep on the rod.",
      "waits quietly for a fish to bite."]),
    ("Cleaning windows: A woman sprays cleaner on the glass. She", 0,
     ["wipes it with a cloth until it shines.", "breaks the window with a hammer.",
      "paints the window black.", "eats the cloth."]),
    ("Tying shoes: A child crosses the laces of his shoe. He", 1,
     ["cuts the laces off.", "loops them and pulls them into a bow.", "throws the shoe at a bird.",
      "puts the shoe on his hand."]),
    ("Cooking pasta: A cook brings a pot of salted water to a boil. He", 2,
     ["pours the water on the floor.", "puts the pot in the freezer.",
      "adds the pasta and stirs it with a spoon.", "washes his hair in the pot."]),
    ("Mowing the lawn: A man starts the lawn mower. He", 3,
     ["rides it to the store.", "lets it run in the kitchen.", "paints the grass red.",
      "pushes it back and forth across the yard."]),
    ("Reading a book: A girl opens a book on her lap. She", 0,
     ["turns the pages and reads quietly.", "eats the pages one by one.", "uses the book as a hat.",
      "throws the book in the pool."]),
    ("Folding laundry: A woman takes warm towels out of the dryer. She", 1,
     ["throws them in the mud.", "folds each towel and stacks it on the table.", "sets them on fire.",
      "wears all of them at once."]),
    ("Shoveling snow: A man steps outside into the deep snow. He", 2,
     ["takes a nap in the snow.", "brings the snow inside.", "scoops the snow off the driveway with a shovel.",
      "paints the snow yellow."]),
    ("Juggling: A performer tosses three balls into the air. He", 3,
     ["lets them all fall and leaves.", "eats the balls.", "puts the balls in his pockets and sleeps.",
      "catches and throws them in a steady rhythm."]),
]

WINOGRANDE = [
    ("Sarah was a much better surgeon than Maria so _ always got the easier cases.", "Sarah", "Maria", 2),
    ("Sarah was a much better surgeon than Maria so _ always got the harder cases.", "Sarah", "Maria", 1),
    ("The trophy doesn't fit into the brown suitcase because the _ is too large.", "trophy", "suitcase", 1),
    ("The trophy doesn't fit into the brown suitcase because the _ is too small.", "trophy", "suitcase", 2),
    ("John couldn't see the stage with Billy in front of him because _ is so short.", "John", "Billy", 1),
    ("John couldn't see the stage with Billy in front of him because _ is so tall.", "John", "Billy", 2),
    ("The cat caught the mouse because the _ was faster.", "cat", "mouse", 1),
    ("The cat caught the mouse because the _ was slower.", "cat", "mouse", 2),
    ("Emily gave her old coat to Jessica because _ had outgrown it.", "Emily", "Jessica", 1),
    ("Emily gave her old coat to Jessica because _ needed a warm one.", "Emily", "Jessica", 2),
    ("The bottle would not fit in the bag, so Tom put the _ away and carried it in his hand.", "bottle", "bag", 2),
    ("The water in the pot boiled before the milk in the pan because the _ was on the bigger flame.", "pot", "pan", 1),
    ("Kevin asked Robert for advice about cars because _ knew nothing about engines.", "Kevin", "Robert", 1),
    ("Kevin asked Robert for advice about cars because _ knew a lot about engines.", "Kevin", "Robert", 2),
    ("The ice melted faster than the snow because the _ was in the sun.", "ice", "snow", 1),
    ("Rachel liked the blue dress more than the red one, so she bought the _ dress.", "blue", "red", 1),
    ("The pen ran out of ink before the pencil broke, so the _ was used up first.", "pen", "pencil", 1),
    ("Megan was stronger than Amy, so _ carried the heavy box up the stairs.", "Megan", "Amy", 1),
    ("Megan was stronger than Amy, so _ carried only the light box up the stairs.", "Megan", "Amy", 2),
    ("The plant by the window grew taller than the one in the hall because the _ got more light.", "window", "hall", 1),
    ("Dennis bought a new phone instead of a laptop because the _ was cheaper.", "phone", "laptop", 1),
    ("The soup was hotter than the tea, so Lisa waited before eating the _.", "soup", "tea", 1),
    ("Adam taught Brian to swim because _ was a lifeguard.", "Adam", "Brian", 1),
    ("Adam taught Brian to swim because _ was afraid of the water.", "Adam", "Brian", 2),
    ("The glass broke but the cup did not, because the _ was made of plastic.", "glass", "cup", 2),
    ("Natalie called Monica at midnight because _ could not sleep.", "Natalie", "Monica", 1),
    ("The dog chased the ball into the street, so the _ had to be kept on a leash.", "dog", "ball", 1),
    ("Jason lent money to Eric because _ had just been paid.", "Jason", "Eric", 1),
    ("Jason lent money to Eric because _ had lost his wallet.", "Jason", "Eric", 2),
    ("The candle lasted longer than the match because the _ was bigger.", "candle", "match", 1),
]


def write_hellaswag(path: Path, items=HELLASWAG) -> Path:
    lines = []
    for context, gold, endings in items:
        lines += [context, str(gold), *endings]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_winogrande(path: Path, items=WINOGRANDE, header: bool = False) -> Path:
    """One CSV line a task (sentences with a comma in quotes), the file ending in one newline."""
    lines = ["qID,sentence,option1,option2,answer"] if header else []
    for i, (sentence, one, two, answer) in enumerate(items):
        quoted = f'"{sentence}"' if "," in sentence else sentence
        lines.append(f"{i},{quoted},{one},{two},{answer}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<I", len(b)) + b


def _answers(texts: list[str], labels: list[int]) -> bytes:
    return struct.pack("<I", len(texts)) + b"".join(_string(t) for t in texts) + struct.pack(f"<{len(labels)}i", *labels)


def write_multiple_choice(path: Path, items: list[tuple[str, list[str], int]]) -> Path:
    """llama.cpp's binary multiple-choice file: (question, answers, index of the right one) per task."""
    bodies = [_string(q) + _answers(a, [int(i == gold) for i in range(len(a))]) + _answers([], [])
              for q, a, gold in items]
    offsets, at = [], 4 + 4 * len(bodies)
    for b in bodies:
        offsets.append(at)
        at += len(b)
    path.write_bytes(struct.pack(f"<I{len(bodies)}I", len(bodies), *offsets) + b"".join(bodies))
    return path


def hellaswag_as_multiple_choice(path: Path) -> Path:
    """The HellaSwag items above in the binary format (as llama.cpp's validation sets carry HellaSwag)."""
    return write_multiple_choice(path, [(c, e, g) for c, g, e in HELLASWAG])


EXAM = [  # (question, choices A-D, answer letter): school questions in the style of MMLU / C-Eval
    ("What is 2 + 3?", ["4", "5", "6", "7"], "B"),
    ("What color is the sky on a clear day?", ["Green", "Red", "Blue", "Black"], "C"),
    ("How many legs does a dog have?", ["Four", "Two", "Six", "Eight"], "A"),
    ("What is the capital of France?", ["Berlin", "Madrid", "Rome", "Paris"], "D"),
    ("Which of these is a fruit, in the words \"apple, pie\"?", ["Apple", "Car", "Stone", "Cloud"], "A"),
]

GSM8K = [  # (question, worked answer ending "#### NUMBER") as GSM8K writes them
    ("What is 2+3?", "2+3 = <<2+3=5>>5\n#### 5"),
    ("What is 1+1?", "1+1 = <<1+1=2>>2\n#### 2"),
    ("A farmer has 1,200 sheep and sells 250 of them. How many sheep are left?",
     "1200-250 = <<1200-250=950>>950\n#### 950"),
]


def write_exam_csv(path: Path, items=EXAM, header: str | None = "id,question,A,B,C,D,answer,explanation") -> Path:
    """C-Eval's CSV (with its id and explanation columns); header=None: MMLU's raw CSV without one."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header.split(","))
        for i, (q, choices, answer) in enumerate(items):
            w.writerow([i, q, *choices, answer, ""] if header else [q, *choices, answer])
    return path


def write_exam_jsonl(path: Path, items=EXAM) -> Path:
    """MMLU's JSONL: question, choices (a list), answer (the right choice's index)."""
    import json

    rows = [json.dumps({"question": q, "subject": "misc", "choices": c, "answer": "ABCD".index(a)})
            for q, c, a in items]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_gsm8k(path: Path, items=GSM8K) -> Path:
    import json

    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in items), encoding="utf-8")
    return path
