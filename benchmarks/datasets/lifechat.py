"""lifechat: short, frequent user-assistant chats about everyday life.

The second generated development set, of yet another shape than LoCoMo and
techchat: many short sessions (20-30 of 3-7 exchanges, short assistant
replies) in which a user plans meals, trips, workouts and family matters
with an assistant. Facts, standing preferences and instructions, updates and
dated events are planted among ordinary requests; questions come later in
other words ("my sister's kid" for "my nephew Leo", "the place we're flying
to" for "Lisbon"). All text is written for this file; the licence is the
project's. Labels are the same ten abilities as techchat's.

``python -m benchmarks.datasets.lifechat [--seed N]`` writes the set to the
cache and prints its path and counts.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from benchmarks.datasets.base import (
    DAY_MS,
    Builder,
    cached,
    describe_main,
    fill,
    finish,
    generate_all,
    write_exchanges,
)

NAME = "lifechat"
VERSION = 2
CONVERSATIONS = 18
START_MS = 1_688_169_600_000  # 1 July 2023

# (what the user says, how a later question refers to it)
RELATIVES = (("my sister Ana", "my sibling"), ("my nephew Leo", "my sister's kid"), ("my mum", "my mother"),
             ("my partner Sam", "the person I live with"), ("my dad", "my father"), ("my friend Ruth", "my pal"))
CITIES = (("Lisbon", "the Portuguese capital"), ("Kyoto", "the old Japanese capital"), ("Oslo", "Norway's capital"),
          ("Marrakesh", "the Moroccan city"), ("Vancouver", "the Canadian west coast city"))
FOODS = (("Thai curry", "Southeast Asian dishes"), ("sushi", "raw fish dishes"), ("lasagne", "baked pasta"),
         ("falafel", "chickpea fritters"), ("ramen", "noodle soup"))
SPORTS = (("running", "jogging"), ("swimming", "laps in the pool"), ("cycling", "riding my bike"),
          ("yoga", "stretching classes"), ("climbing", "bouldering"))
PETS = (("a beagle called Biscuit", "the dog"), ("a cat named Miso", "my feline"),
        ("two goldfish", "the fish tank residents"))

FACTS = (
    ("{rel} has a birthday on the {n}th of the month.", ("When is {relq}'s birthday?",
                                                        "What day of the month should I plan {relq}'s party for?")),
    ("I have {pet}.", ("What kind of animal do I keep at home?", "Remind me about my companion at home.")),
    ("My flight to {city} leaves from gate B{n}.", ("Which gate does my plane to {cityq} depart from?",)),
    ("{rel} is allergic to peanuts.", ("Is there any food {relq} can't eat?", "What should I avoid cooking when "
                                       "{relq} visits?")),
    ("My doctor's appointment is with Dr. Okafor at the Elm Street clinic.",
     ("Where do I go for my medical check-ups?", "Who is my GP?")),
    ("I took up {sport} {n} months ago.", ("How long have I been doing {sportq}?",)),
)
PREFERENCES = (
    ("I love {food} more than anything.", ("What cuisine would make me happiest tonight?",
                                           "Which dish should you suggest when I can't decide on dinner?",
                                           "Do I like {foodq}?")),
    ("I'm vegetarian, so no meat in any recipe, please.", ("Suggest something for dinner this week.",
                                                          "What should recipes you give me leave out?")),
    ("I prefer window seats and early flights.", ("Book me something for the next trip; what do I usually want?",
                                                 "How do I like to travel by plane?")),
    ("I'd rather exercise in the morning than after work.", ("When should my workouts be scheduled?",)),
)
INSTRUCTIONS = (
    ("Always give me quantities in grams, not cups.", ("How much flour goes into a basic pancake batter?",
                                                       "Which units should measurements be in for me?")),
    ("Please keep replies under three sentences.", ("How long should your answers to me be?",
                                                    "Tell me about the history of tea.")),
    ("Remind me to drink water whenever I mention a workout.", ("I'm heading out for a long session at the gym.",
                                                                "What did I ask you to nudge me about when I train?")),
    ("Don't suggest anything with {food}; I'm tired of it.", ("What dish did I tell you to stop proposing?",)),
)
UPDATES = (
    (("We're renting a flat on Baker Road.", "We moved into a house on Mill Lane last weekend."),
     ("Where do I live now?", "What's my current address street?")),
    (("I work at a bakery downtown.", "I started a new job at the city library this week."),
     ("Where am I employed these days?", "What's my workplace now?")),
    (("My car is an old Fiat.", "I sold the Fiat and bought an electric Kia."),
     ("What do I drive at the moment?",)),
    (("I'm training for a 10k race.", "I signed up for the half marathon instead of the 10k."),
     ("Which race am I preparing for now?",)),
)
EVENTS = (
    ("booked the flights to {city}", "sorted out the plane tickets for the trip"),
    ("took {pet} to the vet for vaccinations", "went to the animal doctor"),
    ("finished painting the spare bedroom", "redecorated the guest room"),
    ("had dinner at {rel}'s place", "ate at {relq}'s home"),
    ("ran my first race", "completed my first competitive run"),
    ("started a pottery class", "began learning to make ceramics"),
    ("renewed my passport", "got my travel document replaced"),
    ("planted tomatoes in the garden", "put vegetables in the ground out back"),
)
EVENT_SAID = ("Today I {e}.", "Guess what, I {e} yesterday!", "Just so you know, I {e} this morning.",
              "Finally {e} over the weekend.")
FILLER = (
    ("What's a quick breakfast I can make in five minutes?", "Overnight oats or yoghurt with fruit and nuts."),
    ("Any tips for sleeping better?", "Keep a fixed bedtime, dim the lights an hour before and skip late coffee."),
    ("How do I get red wine out of a shirt?", "Blot it, then cold water and a little dish soap before washing."),
    ("Suggest a board game for four people.", "Ticket to Ride is easy to learn and fun with four."),
    ("What should I pack for a weekend away?", "Layers, a rain jacket, chargers, and your toiletries bag."),
    ("How often should I water succulents?", "Every two weeks or so, when the soil is fully dry."),
    ("Can you recommend a podcast about history?", "Try one that tells a single story over several episodes."),
    ("What's a good stretch for a stiff back?", "Child's pose and cat-cow, slowly, for a minute each."),
    ("How do I make my coffee less bitter?", "Use slightly coarser grounds and water just off the boil."),
    ("Give me an idea for a rainy Sunday.", "Bake bread, read, or visit a museum you haven't seen."),
    ("How long do boiled eggs keep in the fridge?", "About a week if they're still in their shells."),
    ("What's a cheap way to decorate a small flat?", "Plants, a big mirror and a few framed prints."),
)
PLACES = (("Vancouver", "the Canadian west coast"), ("Iceland", "the land of geysers"), ("Peru", "the Andes"),
          ("Vietnam", "Southeast Asia"), ("Scotland", "the Highlands"), ("Morocco", "North Africa"))
TRIED = (
    (("rock climbing", "a spin class", "kayaking", "pilates", "tennis"), ("kinds of exercise", "activities")),
    (("Ethiopian food", "Korean barbecue", "Georgian dumplings", "Peruvian ceviche"), ("cuisines", "types of food")),
    (("Catan", "Azul", "Codenames", "Wingspan"), ("board games", "tabletop games")),
)
ACKS = ("Noted!", "Got it.", "Okay, I'll remember.", "Thanks for telling me.", "Good to know.")


class Chat:
    def __init__(self, number: int, rng: random.Random) -> None:
        self.rng = rng
        self.b = Builder(f"lifechat-{number}", rng, START_MS + number * 30 * DAY_MS)
        self.count = rng.randint(20, 30)
        self.plants: list[list[tuple[str, str]]] = [[] for _ in range(self.count)]
        self.keys: dict[str, str] = {}
        self.pending: list[tuple[str, str, list[str]]] = []
        self.rel, self.city, self.food = rng.choice(RELATIVES), rng.choice(CITIES), rng.choice(FOODS)
        self.sport, self.pet = rng.choice(SPORTS), rng.choice(PETS)
        self.decks: dict[int, list] = {}

    def deal(self, table: tuple) -> object:
        """The next unused entry of ``table``: no statement is planted twice in one conversation."""
        deck = self.decks.setdefault(id(table), self.rng.sample(list(table), len(table)))
        return deck.pop()

    def slots(self) -> dict[str, str]:
        direct = self.rng.random() < 0.35  # a question names the thing itself a third of the time
        return {
            "rel": self.rel[0], "relq": self.rel[0] if direct else self.rel[1], "city": self.city[0],
            "cityq": self.city[0] if direct else self.city[1], "food": self.food[0],
            "foodq": self.food[0] if direct else self.food[1], "sport": self.sport[0],
            "sportq": self.sport[0] if direct else self.sport[1], "pet": self.pet[0], "n": str(self.rng.randint(2, 9)),
        }

    def plant(self, session: int, text: str) -> str:
        key = f"k{len(self.keys)}-{self.rng.randrange(10**9)}"
        self.keys[key] = ""
        self.plants[session].append((key, text))
        return key

    def early(self) -> int:
        return self.rng.randrange(self.count - 3)

    def one(self, table: tuple, ability: str) -> None:
        said, asked = self.deal(table)  # type: ignore[misc]
        s = self.slots()
        key = self.plant(self.early(), fill(said, **s))
        self.pending.append((fill(self.rng.choice(asked), **s), ability, [key]))

    def update(self) -> None:
        (old, new), asked = self.deal(UPDATES)  # type: ignore[misc]
        first = self.rng.randrange(self.count - 6)
        self.plant(first, old)
        key = self.plant(self.rng.randrange(first + 3, self.count), new)
        self.pending.append((self.rng.choice(asked), "knowledge_update", [key]))

    def events(self, n: int) -> list[tuple[str, str]]:
        s = self.slots()
        sessions = sorted(self.rng.sample(range(self.count), n))
        out = []
        for session in sessions:
            said, asked = self.deal(EVENTS)  # type: ignore[misc]
            text = fill(self.rng.choice(EVENT_SAID), e=said.format(**s))
            out.append((self.plant(session, text), asked.format(**s)))
        return out

    def dated(self) -> None:
        ((k1, q1), (k2, q2)) = self.events(2)
        if self.rng.random() < 0.5:
            self.pending.append((f"How long after I {q1} did I {q2}?", "temporal", [k1, k2]))
        else:
            self.pending.append((fill(self.rng.choice(("When did I {q}?", "What date was it when I {q}?")), q=q1),
                                 "temporal", [k1]))

    def ordered(self) -> None:
        events = self.events(3)
        a, b, c = self.rng.sample([q for _, q in events], 3)
        self.pending.append((f"Which came first: when I {a}, when I {b}, or when I {c}?", "ordering",
                             [k for k, _ in events]))

    def recap(self) -> None:
        events = self.events(3)
        q = self.rng.choice(("What have I been up to lately?", "Give me a recap of my recent news.",
                             "Summarize the things I've told you I did."))
        self.pending.append((q, "summary", [k for k, _ in events]))

    def across(self) -> None:
        pool, (kind, other) = self.deal(TRIED)  # type: ignore[misc]
        items = self.rng.sample(pool, 3)
        keys = [self.plant(s, fill(self.rng.choice(("I tried {x} for the first time today.",
                                                    "Gave {x} a go this week.")), x=x))
                for s, x in zip(sorted(self.rng.sample(range(self.count), 3)), items, strict=True)]
        kind = self.rng.choice((kind, other))
        q = self.rng.choice((f"How many new {kind} have I sampled?", f"Which {kind} have I tested out recently?"))
        self.pending.append((q, "multi_session", keys))

    def contradict(self) -> None:
        first = self.rng.randrange(self.count - 5)
        place, other = self.deal(PLACES)  # type: ignore[misc]
        asked = place if self.rng.random() < 0.35 else other
        k1 = self.plant(first, f"I've never been to {place}.")
        k2 = self.plant(self.rng.randrange(first + 2, self.count),
                        f"When I lived in {place} for a year, I ate out every night.")
        self.pending.append((f"Have I spent time in {asked} before?", "contradiction", [k1, k2]))

    def abstain(self) -> None:
        q = self.rng.choice(("What's my blood type?", "Which school did my dad go to?", "What is my boss called?"))
        self.pending.append((q, "abstention", []))


PLAN: tuple[tuple[Callable[[Chat], None], int], ...] = (
    (lambda c: c.one(FACTS, "information_extraction"), 6), (lambda c: c.one(PREFERENCES, "preference"), 4),
    (lambda c: c.one(INSTRUCTIONS, "instruction"), 4), (Chat.update, 4), (Chat.dated, 1), (Chat.ordered, 1),
    (Chat.recap, 1), (Chat.across, 3), (Chat.contradict, 4), (Chat.abstain, 2),
)


def conversation(number: int, rng: random.Random) -> dict:
    c = Chat(number, rng)
    for make, times in PLAN:
        for _ in range(times):
            make(c)
    for session in range(c.count):
        c.b.session(rng.randint(1, 4))
        exchanges: list[tuple[str | None, str, str]] = [(None, *rng.choice(FILLER)) for _ in range(rng.randint(2, 5))]
        for key, text in c.plants[session]:
            exchanges.insert(rng.randrange(len(exchanges) + 1), (key, text, rng.choice(ACKS)))
        write_exchanges(c.b, c.keys, exchanges)
    return finish(c.b, c.keys, c.pending)


def generate(seed: int) -> list[dict]:
    return generate_all(seed, CONVERSATIONS, conversation)


def path(seed: int = 1) -> str:
    return str(cached(NAME, VERSION, seed, generate))


def main() -> None:
    describe_main(__doc__ or NAME, path)


if __name__ == "__main__":
    main()
