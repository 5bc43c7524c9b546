"""techchat: long user-assistant technical chats, generated deterministically.

A development set of another shape than LoCoMo: one user talks with an
assistant about their software projects over 16-22 sessions (a few hundred
turns per conversation, long assistant answers full of the same tool names).
Among ordinary technical questions the user now and then states something a
memory should keep: a fact, a standing preference or instruction, a change
that supersedes an earlier fact, a dated event, a contradiction. Questions
come later and are worded apart from the evidence: synonyms ("datastore" for
"database"), indirect references ("the service that charges customers" for
"the billing service"), requests whose answer depends on an instruction
given sessions earlier. Every template, slot and word list below is written
for this file (no outside text); the licence is the project's.

Ten abilities, as in published long-term memory evaluations:
information_extraction, preference, instruction, knowledge_update,
temporal, ordering, multi_session, summary, contradiction, abstention (no
evidence: not scored for recall, counted apart).

``python -m benchmarks.datasets.techchat [--seed N]`` writes the set to the
cache (benchmarks/datasets/base.py) and prints its path and counts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

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

NAME = "techchat"
VERSION = 2
CONVERSATIONS = 8
START_MS = 1_672_531_200_000  # 1 January 2023


@dataclass(frozen=True)
class Category:
    items: tuple[str, ...]
    said: tuple[str, ...]  # how the user names it when stating a fact
    asked: tuple[str, ...]  # how a later question names it (other words)


CATEGORIES = {
    "database": Category(("PostgreSQL", "MySQL", "MariaDB", "CockroachDB", "SQLite"),
                         ("database", "DB", "relational database"),
                         ("datastore", "SQL engine", "storage backend for tables", "persistence layer")),
    "cache": Category(("Redis", "Memcached", "Valkey", "Hazelcast"),
                      ("cache", "caching layer"),
                      ("in-memory key-value store", "thing that keeps hot data in RAM", "memoisation layer")),
    "queue": Category(("Kafka", "RabbitMQ", "NATS", "Amazon SQS", "Pulsar"),
                      ("message queue", "queue", "message broker"),
                      ("event bus", "pub/sub system", "way services pass events around")),
    "monitoring": Category(("Prometheus", "Datadog", "New Relic", "Zabbix", "Grafana Cloud"),
                           ("monitoring", "metrics stack", "monitoring tool"),
                           ("observability setup", "alerting and dashboards", "telemetry tooling")),
    "ci": Category(("GitHub Actions", "Jenkins", "GitLab CI", "CircleCI", "Buildkite"),
                   ("CI", "CI server", "continuous integration"),
                   ("automated build pipeline", "system that runs the tests on every push", "build automation")),
    "iac": Category(("Terraform", "Pulumi", "Ansible", "CloudFormation"),
                    ("infrastructure as code", "IaC tool", "provisioning tool"),
                    ("way of declaring cloud resources", "config management", "tool that sets up servers")),
    "orchestration": Category(("Kubernetes", "Nomad", "Docker Swarm", "Amazon ECS"),
                              ("orchestrator", "container platform", "cluster scheduler"),
                              ("thing the containers are scheduled on", "deployment platform", "runtime for the pods")),
    "editor": Category(("Neovim", "VS Code", "Emacs", "IntelliJ IDEA", "Helix"),
                       ("editor", "IDE"),
                       ("coding environment", "program I write code in", "text editing setup")),
    "frontend": Category(("React", "Vue", "Svelte", "Angular", "SolidJS"),
                         ("frontend framework", "UI framework", "JS framework"),
                         ("library for the web client", "browser-side toolkit", "way of building the interface")),
    "testing": Category(("pytest", "Jest", "JUnit", "Playwright", "Cypress"),
                        ("test framework", "testing library"),
                        ("tool for checking the code works", "test runner", "harness for automated checks")),
}
ASK_PLURAL = {
    "database": "datastores", "cache": "in-memory stores", "queue": "event buses",
    "monitoring": "observability tools", "ci": "build automation services", "iac": "provisioning approaches",
    "orchestration": "deployment platforms", "editor": "coding environments", "frontend": "browser-side toolkits",
    "testing": "test runners",
}

PROJECTS = (
    ("billing service", ("the payments backend", "the service that charges customers", "the invoicing system")),
    ("inventory API", ("the stock-tracking endpoint", "the service that counts what is in the warehouse",
                       "the warehouse backend")),
    ("mobile backend", ("the server behind the phone app", "the app's server side", "the API the phone clients call")),
    ("analytics pipeline", ("the reporting jobs", "the thing that crunches usage numbers", "the data warehouse feed")),
    ("auth gateway", ("the login front door", "the sign-in proxy", "the service that checks tokens")),
    ("search indexer", ("the job that feeds full-text lookup", "the indexing worker", "the search ingest")),
    ("notification service", ("the thing that sends emails and pushes", "the alerts-to-users sender",
                              "the messaging worker")),
    ("recommendation engine", ("the suggestions model service", "the 'you may also like' backend",
                               "the ranking service for products")),
)
PEOPLE = ("Priya", "Marco", "Aisha", "Jonas", "Mei", "Tomasz", "Lucia", "Kwame", "Sven", "Noor", "Diego", "Hana")
LANGS = (("Python", ("3.9", "3.11", "3.12")), ("Node", ("16", "18", "20")), ("Go", ("1.19", "1.21", "1.22")),
         ("Java", ("11", "17", "21")), ("Ruby", ("2.7", "3.2", "3.3")))
REGIONS = (("eu-west-1", "Ireland"), ("us-east-2", "Ohio"), ("ap-southeast-1", "Singapore"),
           ("eu-central-1", "Frankfurt"), ("us-west-2", "Oregon"))

# -- events (dated things the user did): how they are said, and asked --------------
EVENTS = (
    ("set up {ci} for the {project}", "got automated builds going for {alias}"),
    ("moved the {project} data over to {database}", "changed which datastore {alias} keeps its records in"),
    ("hooked the {project} up to {monitoring} with paging alerts", "wired up observability for {alias}"),
    ("containerized the {project} and deployed it on {orchestration}", "put {alias} into containers"),
    ("rotated every API key the {project} uses", "refreshed the credentials of {alias}"),
    ("had a two-hour outage on the {project} because a disk filled up", "dealt with {alias} going down"),
    ("wrote load tests for the {project}", "stress-tested {alias}"),
    ("turned on TLS between all the {project} components", "enabled encryption in transit for {alias}"),
    ("split the {project} monolith into three services", "broke {alias} into smaller pieces"),
    ("added a read replica to the {project} database", "gave {alias} a second, read-only copy of its data"),
    ("upgraded the {project} dependencies and fixed the deprecation warnings", "refreshed the libraries {alias}"
     " depends on"),
    ("wrote the runbook for the {project} on-call rotation", "documented how to handle pages for {alias}"),
)
EVENT_SAID = (
    "Today I finally {event}.", "Quick update: I {event} this morning.", "So, I {event} — took longer than I hoped.",
    "Small win: we {event} yesterday.", "Heads up, we {event} over the weekend.",
)

FILLER_USER = (
    "What's the practical difference between {a} and {b} for a small team?",
    "How do I debug slow queries when the {project} is under load?",
    "Can you explain how connection pooling works with {database}?",
    "Is it worth running {orchestration} for only a handful of services?",
    "For the {project}, should I paginate with offsets or with cursors?",
    "I'm seeing timeouts between the {project} and {queue}. Where would you start looking?",
    "What's a sane retry policy for calls between microservices?",
    "How should I structure the config files for the {project}?",
    "Can you walk me through blue-green deployments?",
    "How do people usually version a public REST API?",
    "What metrics would you put on a dashboard for the {project}?",
    "Explain idempotency keys to me like I'm new to this.",
    "Any tips for keeping {ci} pipelines fast?",
    "How do I write a migration that doesn't lock a big table in {database}?",
    "What's the cleanest way to handle feature flags?",
    "Should the {project} talk to {cache} directly or through a wrapper?",
    "How do I profile memory usage in a long-running worker?",
    "What does eventual consistency mean in practice for the {project}?",
    "Can you review this approach: one {queue} topic per customer?",
    "What's your take on monorepos versus many repos?",
)
FILLER_ASSISTANT = (
    "{a} tends to fit when the workload is simple and the team is small, while {b} pays off once you need more "
    "control over failover and tuning.",
    "A good first step is to measure: turn on slow query logging, look at the p95 rather than the mean, and check "
    "whether the time goes into the network, the locks or the planner.",
    "Keep the pool small and bounded; most outages I see with {database} come from too many connections rather "
    "than too few.",
    "It depends on how often you deploy. For a few services a plain VM with systemd is often enough, and "
    "{orchestration} adds operational weight you have to carry.",
    "Cursors are safer for large, changing tables because offsets skip or repeat rows when data moves underneath "
    "you.",
    "Start with the client timeouts and the broker's consumer lag; with {queue} a slow consumer usually shows up "
    "there first.",
    "Use exponential backoff with jitter and a cap, retry only idempotent calls, and put a deadline on the whole "
    "request so retries cannot pile up.",
    "Keep one base file, small per-environment overrides, and secrets out of the repository entirely.",
    "You run two identical environments, send traffic to one, deploy to the other, test it, then switch the "
    "router; rollback is switching back.",
    "Version in the URL for big breaking changes and add fields compatibly the rest of the time; clients ignore "
    "what they do not know.",
    "Request rate, error rate and latency percentiles per endpoint, plus saturation: CPU, memory, queue depth and "
    "{cache} hit ratio.",
    "An idempotency key lets a client retry safely: the server remembers the key with the result and returns the "
    "same answer instead of doing the work twice.",
    "Cache dependencies, split slow suites across parallel jobs, and only run the expensive end-to-end tests on "
    "the main branch.",
    "Add the column as nullable first, backfill in small batches, then add the constraint; each step takes only a "
    "short lock.",
    "Keep flags in one service with a typed client, give every flag an owner and an expiry date, and delete them "
    "once rolled out.",
    "A thin wrapper is worth it: it gives you one place for timeouts, key naming and metrics around {cache}.",
    "Take heap snapshots a few minutes apart and diff them; what keeps growing between snapshots is your leak.",
    "It means a reader may see old data for a short while after a write, so every screen that shows fresh data "
    "must tolerate that or read from the primary.",
    "One topic per customer gets unwieldy fast; a shared topic keyed by customer keeps ordering per customer "
    "without thousands of topics in {queue}.",
    "A monorepo makes cross-cutting changes easy and tooling harder; many repos are the opposite. Pick by how often "
    "you change several services at once.",
)
ACKS = (
    "Noted, I'll keep that in mind.", "Got it.", "Thanks, that's useful context.", "Understood.",
    "Okay, I'll remember that for later.", "Makes sense, thanks for telling me.",
)


class Conversation:
    """One user's chats: what they use, and the builder the plants go into."""

    def __init__(self, number: int, rng: random.Random) -> None:
        self.rng = rng
        self.b = Builder(f"techchat-{number}", rng, START_MS + number * 40 * DAY_MS)
        self.projects = rng.sample(PROJECTS, 4)
        self.people = rng.sample(PEOPLE, 6)
        self.used = {name: rng.sample(cat.items, len(cat.items)) for name, cat in CATEGORIES.items()}
        self.count = rng.randint(16, 22)
        self.plants: list[list[tuple[str, str, str]]] = [[] for _ in range(self.count)]  # (key, user, reply)
        self.keys: dict[str, str] = {}
        self.pending: list[tuple[str, str, list[str]]] = []  # (question, ability, plant keys)
        self.next_key = 0
        self.decks: dict[str, list] = {}

    def deal(self, name: str, options: list) -> object:
        """The next unused one of ``options``: no statement is planted twice in one conversation."""
        deck = self.decks.setdefault(name, self.rng.sample(options, len(options)))
        return deck.pop()

    def plant(self, session: int, text: str, reply: str | None = None) -> str:
        key = f"k{self.next_key}"
        self.next_key += 1
        self.plants[session].append((key, text, reply if reply is not None else self.rng.choice(ACKS)))
        return key

    def slots(self, project: tuple[str, tuple[str, ...]] | None = None) -> dict[str, str]:
        out = {name: self.rng.choice(self.used[name][:2]) for name in CATEGORIES}
        project = project or self.rng.choice(self.projects)
        # a later question names the project by name 40% of the time, by a paraphrase otherwise
        out["project"] = project[0]
        out["alias"] = f"the {project[0]}" if self.rng.random() < 0.4 else self.rng.choice(project[1])
        return out

    def asked(self, cat: Category) -> str:
        """How a question names a category: mostly other words than the user used."""
        return self.rng.choice(cat.said if self.rng.random() < 0.3 else cat.asked)

    def later(self, after: int) -> int:
        return self.rng.randrange(min(after + 1, self.count - 1), self.count)


# -- the abilities: each plants evidence and queues its question -------------------
def information_extraction(c: Conversation) -> None:
    fact, project = c.deal("facts", [(f, p) for f in range(7) for p in c.projects])  # type: ignore[misc]
    s = c.slots(project)
    n = str(c.rng.choice((2, 3, 4, 6, 8, 12, 16, 32, 64)))
    person = c.rng.choice(c.people)
    region, place = c.rng.choice(REGIONS)
    facts = (
        ("The {database} instance behind the {project} has {n} GB of RAM.",
         ("How much memory does the box that stores {alias}'s tables have?",
          "What's the RAM size on {alias}'s {asked_db} server?")),
        ("{person} is the tech lead on the {project}, so loop them in on design questions.",
         ("Who heads up engineering for {alias}?", "Which colleague should weigh in on architecture for {alias}?")),
        ("Our staging copy of the {project} lives in {region}.",
         ("Where is the pre-production environment of {alias} hosted?",
          "Which geography holds the test deployment of {alias}?")),
        ("The nightly backup of the {project} kicks off at {n}:00 UTC.",
         ("At what hour does {alias} get snapshotted each night?", "When does the daily dump of {alias} start?")),
        ("We promised a p95 latency under {n}0 ms for the {project}.",
         ("What response-time target did we commit to for {alias}?", "How fast must {alias} answer, at the 95th "
          "percentile?")),
        ("Our cloud budget for the {project} is {n}00 dollars a month.",
         ("How much can {alias} cost us in hosting every month?", "What's the monthly spending cap for running "
          "{alias}?")),
        ("The {project} is written by a team of {n} engineers.",
         ("How many developers work on {alias}?", "How big is the crew building {alias}?")),
    )
    said, asked = facts[fact]
    slots = {**s, "n": n, "person": person, "region": region, "asked_db": c.asked(CATEGORIES["database"])}
    key = c.plant(c.rng.randrange(c.count - 2), fill(said, **slots))
    del place
    q = fill(c.rng.choice(asked), **slots)
    c.pending.append((q, "information_extraction", [key]))


def preference(c: Conversation) -> None:
    name = c.deal("preference", list(CATEGORIES))
    cat = CATEGORIES[name]
    liked, disliked = c.used[name][0], c.used[name][-1]
    said = c.rng.choice((
        "I always reach for {liked} when I need a {said}; it has never let me down.",
        "Personally I prefer {liked} over {disliked} for any {said} work.",
        "For what it's worth, {liked} is my favourite {said} by a mile.",
        "I can't stand {disliked}; whenever there's a choice of {said} I pick {liked}.",
    ))
    asked = c.rng.choice((
        "I'm kicking off a new side project and need a {asked}. What would suit my taste?",
        "Which {asked} do I usually favour?",
        "If you had to choose a {asked} for me, which one would I most likely want?",
        "Remind me of my go-to {asked}.",
    ))
    key = c.plant(c.rng.randrange(c.count - 3), fill(said, liked=liked, disliked=disliked, said=c.rng.choice(cat.said)))
    c.pending.append((fill(asked, asked=c.asked(cat)), "preference", [key]))


STYLE_PREFERENCES = (
    ("I like answers short, with bullet points and no long introductions.",
     ("How should you format replies to me?", "What kind of response layout works best for me?",
      "Give me a rundown of how consistent hashing works, in the way I like it.")),
    ("I'm a morning person, so I want deploys scheduled before 10 am.",
     ("When do I want releases to go out?", "What time of day should we plan the next rollout?")),
    ("Please keep in mind I'm colour-blind, so red/green charts are useless to me.",
     ("Anything I should know about how to pick palettes for my dashboards?",
      "What should a graph you sketch for me avoid?")),
)

INSTRUCTIONS = (
    ("From now on, please write any code samples for me in {lang}.",
     ("Could you show me how to read a file line by line?", "Which programming language should examples use when "
      "you answer me?", "Give me a snippet that retries an HTTP call with backoff.")),
    ("Whenever you suggest a shell command, explain every flag you use.",
     ("Give me the command to find the biggest files on this disk.", "What did I ask you to do each time you hand "
      "me something to run in the terminal?")),
    ("Always mention the licence of any library you recommend to me.",
     ("Recommend a package for parsing dates.", "What must you tell me whenever you point me to a dependency?")),
    ("Never suggest {banned} to me; it's banned at my company.",
     ("Is there a {asked} you should keep out of your suggestions for me?", "Which tool did I rule out for "
      "anything you propose?")),
    ("When you propose an algorithm, always state its time complexity.",
     ("Suggest an approach for removing duplicates from a huge list.", "What should you include every time you "
      "describe a procedure to me?")),
    ("Please use British spelling in anything you write for me.",
     ("Draft a short note to my team about the release.", "Which spelling conventions did I ask for?")),
)


def instruction(c: Conversation) -> None:
    said, asked = c.deal("instructions", list(INSTRUCTIONS))  # type: ignore[misc]
    name = c.rng.choice(list(CATEGORIES))
    slots = {"lang": c.rng.choice(LANGS)[0], "banned": c.used[name][-1], "asked": c.asked(CATEGORIES[name])}
    key = c.plant(c.rng.randrange(c.count - 3), fill(said, **slots))
    c.pending.append((fill(c.rng.choice(asked), **slots), "instruction", [key]))


def style_preference(c: Conversation) -> None:
    said, asked = c.deal("styles", list(STYLE_PREFERENCES))  # type: ignore[misc]
    key = c.plant(c.rng.randrange(c.count - 3), said)
    c.pending.append((c.rng.choice(asked), "preference", [key]))


def knowledge_update(c: Conversation) -> None:
    project = c.rng.choice(c.projects)
    s = c.slots(project)
    first = c.rng.randrange(c.count - 4)
    second = c.later(first + 2)
    kind = c.rng.randrange(4)
    if kind == 0:
        lang, versions = c.rng.choice(LANGS)
        old, new = versions[0], c.rng.choice(versions[1:])
        c.plant(first, fill("The {project} still runs on {lang} {old}.", **s, lang=lang, old=old))
        key = c.plant(second, fill(c.rng.choice(("We bumped the {project} to {lang} {new} last night.",
                                                 "The {project} is on {lang} {new} now, finally.")),
                                   **s, lang=lang, new=new))
        q = fill("Which {lang} release is {alias} on these days?", **s, lang=lang)
    elif kind == 1:
        n1, n2 = c.rng.sample((2, 3, 4, 5, 6, 8, 10, 12), 2)
        c.plant(first, fill("The {project} has {n} replicas behind the load balancer.", **s, n=str(n1)))
        key = c.plant(second, fill(c.rng.choice(("We scaled the {project} to {n} replicas after the traffic spike.",
                                                 "The {project} is running {n} replicas as of today.")),
                                   **s, n=str(n2)))
        q = fill(c.rng.choice(("How many instances of {alias} are serving traffic now?",
                               "What's the current copy count for {alias}?")), **s)
    elif kind == 2:
        name = c.rng.choice(("database", "queue", "cache", "monitoring", "ci"))
        cat = CATEGORIES[name]
        old, new = c.used[name][0], c.used[name][1]
        c.plant(first, fill("The {project} uses {old} as its {said}.", **s, old=old, said=c.rng.choice(cat.said)))
        key = c.plant(second, fill(c.rng.choice(("We ripped {old} out of the {project} and replaced it with {new}.",
                                                 "The {project} switched from {old} to {new} this week.")),
                                   **s, old=old, new=new))
        q = fill("What's the current {asked} for {alias}?", **s, asked=c.asked(cat))
    else:
        a, b = c.rng.sample(c.people, 2)
        c.plant(first, fill("{a} is the on-call owner of the {project}.", **s, a=a))
        key = c.plant(second, fill(c.rng.choice(("{b} took over the {project} from {a}.",
                                                 "{a} moved teams, so {b} owns the {project} now.")), **s, a=a, b=b))
        q = fill(c.rng.choice(("Who looks after {alias} these days?", "Who gets paged for {alias} now?")), **s)
    c.pending.append((q, "knowledge_update", [key]))


def _events(c: Conversation, count: int) -> tuple[dict[str, str], list[tuple[int, str, str]]]:
    """``count`` events of one project in increasing sessions: (session, key, how it is asked)."""
    deck = c.decks.setdefault("events", c.rng.sample([(e, p) for e in EVENTS for p in c.projects],
                                                     len(EVENTS) * len(c.projects)))
    projects = [p for p in c.projects if sum(1 for _, q in deck if q == p) >= count]
    project = c.rng.choice(projects)
    s = c.slots(project)
    sessions = sorted(c.rng.sample(range(c.count - 1), count))
    out = []
    for session in sessions:
        said, asked = next(e for e, p in reversed(deck) if p == project)
        deck.remove(((said, asked), project))
        text = fill(c.rng.choice(EVENT_SAID), event=said.format(**s))
        out.append((session, c.plant(session, text), asked))
    return s, out


def temporal(c: Conversation) -> None:
    s, events = _events(c, 2)
    (_, k1, q1), (_, k2, q2) = events
    if c.rng.random() < 0.5:
        q = fill("How many days passed between when I {q1} and when I {q2}?", q1=q1.format(alias=s["alias"]),
                 q2=q2.format(alias="it"))
        evidence = [k1, k2]
    else:
        q = fill(c.rng.choice(("When did I {q1}?", "Roughly how long ago did I {q1}?",
                               "What was the date when I {q1}?")), q1=q1.format(alias=s["alias"]))
        evidence = [k1]
    c.pending.append((q, "temporal", evidence))


def ordering(c: Conversation) -> None:
    s, events = _events(c, 3)
    asked = [q.format(alias="it") for _, _, q in events]
    shuffled = c.rng.sample(asked, 3)
    q = fill(c.rng.choice((
        "For {alias}, in what order did these happen: I {a}, I {b}, and I {c}?",
        "Put these steps for {alias} in sequence: when I {a}, when I {b}, when I {c}.",
    )), alias=s["alias"], a=shuffled[0], b=shuffled[1], c=shuffled[2])
    c.pending.append((q, "ordering", [k for _, k, _ in events]))


def multi_session(c: Conversation) -> None:
    name = c.deal("multi", list(CATEGORIES))
    cat = CATEGORIES[name]
    tried = c.rng.sample(cat.items, 3)
    sessions = sorted(c.rng.sample(range(c.count - 1), 3))
    keys = []
    for session, item in zip(sessions, tried, strict=True):
        said = c.rng.choice((
            "I spent the afternoon evaluating {item} as our {said}.", "Gave {item} a try yesterday for the {said}; "
            "mixed feelings.", "Tested {item} for a bit as a {said} — not bad.", "I played with {item} as a possible "
            "{said} today.",
        ))
        keys.append(c.plant(session, fill(said, item=item, said=c.rng.choice(cat.said))))
    q = c.rng.choice((
        "Across all our chats, how many different {plural} have I experimented with?",
        "Which {plural} have I tried out so far?",
        "Of the {plural} I looked at, which did I evaluate first?",
    ))
    c.pending.append((q.format(plural=ASK_PLURAL[name]), "multi_session", keys))


def summary(c: Conversation) -> None:
    s, events = _events(c, 3)
    q = fill(c.rng.choice((
        "Can you recap what has happened with {alias} across our conversations?",
        "Summarize the story of {alias} so far.",
        "Give me a short history of the work on {alias}.",
    )), alias=s["alias"])
    c.pending.append((q, "summary", [k for _, k, _ in events]))


def contradiction(c: Conversation) -> None:
    name = c.deal("contradiction", list(CATEGORIES))
    item = c.used[name][-1]
    first = c.rng.randrange(c.count - 4)
    second = c.later(first + 2)
    if c.decks.get("unmonitored") == [] or c.rng.random() < 0.5:
        k1 = c.plant(first, fill("I've never used {item} in my life, so go easy on the jargon.", item=item))
        k2 = c.plant(second, fill("Back when I ran {item} in production at my old job, upgrades were painful.",
                                  item=item))
        q = fill(c.rng.choice(("Do I actually have hands-on experience with {item}?",
                               "Have I ever operated {item} for real?")), item=item)
    else:
        project = c.deal("unmonitored", list(c.projects))
        s = c.slots(project)  # type: ignore[arg-type]
        k1 = c.plant(first, fill("The {project} has no {said} at all yet.", **s,
                                 said=c.rng.choice(CATEGORIES["monitoring"].said)))
        k2 = c.plant(second, fill("The {monitoring} graphs for the {project} looked odd this morning.", **s))
        q = fill("Is there any {asked} in place for {alias}?", **s,
                 asked=c.asked(CATEGORIES["monitoring"]))
    c.pending.append((q, "contradiction", [k1, k2]))


def abstention(c: Conversation) -> None:
    q = c.rng.choice((
        "What did I decide about the mobile app's dark mode?", "Which GPU model did I buy for training?",
        "What's the name of my manager?", "How did the security audit of the data lake go?",
        "Which conference did I speak at last spring?",
    ))
    c.pending.append((q, "abstention", []))


ABILITIES: tuple[tuple[Callable[[Conversation], None], int], ...] = (
    (information_extraction, 10), (preference, 6), (style_preference, 2), (instruction, 6),
    (knowledge_update, 8), (temporal, 6), (ordering, 5), (multi_session, 8), (summary, 5), (contradiction, 7),
    (abstention, 3),
)


def _filler(c: Conversation) -> tuple[str, str]:
    s = c.slots()
    a, b = c.rng.sample(c.used[c.rng.choice(list(CATEGORIES))], 2)
    user = fill(c.rng.choice(FILLER_USER), **s, a=a, b=b)
    parts = c.rng.sample(FILLER_ASSISTANT, c.rng.randint(2, 4))
    return user, " ".join(fill(p, **s, a=a, b=b) for p in parts)


def conversation(number: int, rng: random.Random) -> dict:
    c = Conversation(number, rng)
    for make, times in ABILITIES:
        for _ in range(times):
            make(c)
    for session in range(c.count):
        c.b.session(rng.randint(1, 9))
        exchanges: list[tuple[str | None, str, str]] = [(None, *_filler(c)) for _ in range(rng.randint(6, 14))]
        for key, text, reply in c.plants[session]:
            exchanges.insert(rng.randrange(len(exchanges) + 1), (key, text, reply))
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
