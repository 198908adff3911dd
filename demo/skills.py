"""The demo's slot pools and skills, shared by demo/train.py and
demo/unseen.py (no torch here, so the unseen-value prompts can be made
without the training stack).

A skill example is a (prompt, output) pair made by a generator from slot
values: training values from Pools.train (names, cities and half the
products made fresh for every use), held-out values from Pools.held, and
"unseen" values (demo/unseen.py) from sets that training never draws from.
"""
import random
import re

# --------------------------------------------------------------------------
# 1. slot pools

SYLL = ["ka", "lo", "mi", "ra", "ne", "to", "vi", "sa", "de", "lu", "ma", "ri",
        "so", "be", "ta", "no", "el", "an", "or", "is", "ul", "ev", "ar", "in"]
CITY_SUFFIX = ["ton", "ville", "burg", "ford", "field", "port", "dale", "wick"]
PRODUCTS = ["lamp", "chair", "kettle", "phone", "desk", "jacket", "camera", "blender",
            "mirror", "backpack", "toaster", "helmet", "scarf", "guitar", "speaker",
            "printer", "sofa", "clock", "radio", "bicycle", "tablet", "heater", "vase",
            "wallet", "drill", "router", "monitor", "stool", "pillow", "kayak",
            "tent", "ladder", "candle", "teapot", "umbrella", "rug", "shelf", "hammer",
            "mixer", "watch"]


def split(values, frac, rng):
    v = sorted(set(values))
    rng.shuffle(v)
    k = int(round(len(v) * frac))
    return v[k:], v[:k]          # train, held-out


class Pools:
    def __init__(self, seed):
        rng = random.Random(seed)
        names = set()
        while len(names) < 420:
            n = "".join(rng.choice(SYLL) for _ in range(rng.choice((2, 2, 3))))
            names.add(n.capitalize())
        cities = set()
        while len(cities) < 260:
            c = "".join(rng.choice(SYLL) for _ in range(2)) + rng.choice(CITY_SUFFIX)
            cities.add(c.capitalize())
        cities -= names
        self.train, self.held = {}, {}
        for key, vals, frac in (("name", names, 0.2), ("city", cities, 0.2),
                                ("product", PRODUCTS, 0.2),
                                ("age", [str(a) for a in range(20, 90)], 0.2),
                                ("amount", [str(a) for a in range(100, 1000)], 0.2),
                                ("oid", [str(a) for a in range(10000, 100000)], 0.2)):
            tr, he = split(vals, frac, rng)
            self.train[key], self.held[key] = tr, he
        # disjointness: no held-out value is any training value of any kind
        self.held_all = set(v for vs in self.held.values() for v in vs)
        all_train = set(v for vs in self.train.values() for v in vs)
        for key, vs in self.held.items():
            bad = set(vs) & all_train
            assert not bad, f"held-out {key} values also in training: {sorted(bad)[:5]}"
            assert vs, key

    def pick(self, held, key, rng, letters=0.0):
        """A slot value. Held-out values come from the held-out pools; training
        names and cities (and half the products) are made fresh for every
        use, so that no value repeats often enough to be memorised: the only
        way to get them right is to copy them from the prompt."""
        if held:
            return rng.choice(self.held[key])
        if key == "product" and letters and rng.random() < letters:
            while True:
                v = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))
                if v not in self.held_all:
                    return v
        if key in ("name", "city") or (key == "product" and rng.random() < 0.5):
            while True:
                if key == "name":
                    v = "".join(rng.choice(SYLL) for _ in range(rng.choice((2, 2, 3)))).capitalize()
                elif key == "city":
                    v = ("".join(rng.choice(SYLL) for _ in range(2)) + rng.choice(CITY_SUFFIX)).capitalize()
                else:
                    v = "".join(rng.choice(SYLL) for _ in range(2))
                if v not in self.held_all:
                    return v
        return rng.choice(self.train[key])

    def json_pairs(self, rng):
        """How many key=value pairs a json prompt has."""
        return rng.choice((2, 3, 3, 4))


# --------------------------------------------------------------------------
# 2. skills: prompt -> output, deterministic

SQL_TEMPLATES = [
    # (question templates, SQL)
    (["Which customers live in {city}?", "List the customers who live in {city}."],
     "SELECT name FROM customers WHERE city = '{city}';"),
    (["How many customers live in {city}?", "Count the customers in {city}."],
     "SELECT COUNT(*) FROM customers WHERE city = '{city}';"),
    (["Which customers are older than {age}?", "List customers over {age} years old."],
     "SELECT name FROM customers WHERE age > {age};"),
    (["How many orders did {name} place?", "Count the orders of {name}."],
     "SELECT COUNT(*) FROM orders WHERE customer = '{name}';"),
    (["What is the total amount spent by {name}?", "How much did {name} spend in total?"],
     "SELECT SUM(amount) FROM orders WHERE customer = '{name}';"),
    (["Which orders are above {amount} dollars?", "List orders worth more than {amount} dollars."],
     "SELECT id FROM orders WHERE amount > {amount};"),
    (["Who ordered a {product}?", "Which customers bought a {product}?"],
     "SELECT customer FROM orders WHERE product = '{product}';"),
    (["What is the average age of customers in {city}?", "What is the mean age in {city}?"],
     "SELECT AVG(age) FROM customers WHERE city = '{city}';"),
    (["Which products did {name} order?", "What did {name} buy?"],
     "SELECT product FROM orders WHERE customer = '{name}';"),
]


def sql_example(pools, held, rng, letters=0.0, quoted=True):
    """A question with its string values in single quotes, as in the SQL:
    "Who ordered a 'drill'?". Unquoted, the value follows a space, which
    GPT-2's pre-tokenizer glues to it, and its first tokens differ from
    those after the SQL's quote (" So", "ar" against "S", "o", "ar"), so
    sql had to learn to respell every word it copied and misspelt held-out
    ones; quoted, it copies tokens, as json and support do. The tokenizer's
    merge sample keeps the unquoted questions (quoted=False) that the
    committed base was trained with."""
    qs, sql = rng.choice(SQL_TEMPLATES)
    q = rng.choice(qs)
    slots = {k: pools.pick(held, k, rng, letters) for k in ("city", "age", "name", "amount", "product")}
    shown = {k: f"'{v}'" if quoted and k in ("city", "name", "product") else v
             for k, v in slots.items()}
    return q.format(**shown), sql.format(**slots)


JSON_KEYS = [("name", "name", False), ("city", "city", False), ("product", "product", False),
             ("age", "age", True), ("price", "amount", True), ("order", "oid", True)]


def json_example(pools, held, rng, letters=0.0):
    keys = rng.sample(JSON_KEYS, pools.json_pairs(rng))
    pairs = [(k, pools.pick(held, pool, rng, letters), num) for k, pool, num in keys]
    prompt = " ".join(f"{k}={v}" for k, v, _ in pairs)
    out = "{" + ", ".join(f'"{k}": {v}' if num else f'"{k}": "{v}"' for k, v, num in pairs) + "}"
    return prompt, out


SUPPORT_ISSUES = [
    (["Hi, my order {oid} arrived damaged.", "The {product} in my order {oid} is broken."],
     "we are sorry that order {oid} arrived damaged. A free replacement is on its way."),
    (["Where is my order {oid}? It is late.", "My order {oid} has not arrived yet."],
     "we are sorry for the delay of order {oid}. It will arrive within two days."),
    (["I want a refund for order {oid}.", "Please refund my order {oid}, the {product} was not what I wanted."],
     "thank you for your message. The refund for order {oid} has been started."),
    (["Please cancel my order {oid}.", "I would like to cancel order {oid}."],
     "your order {oid} has been cancelled. We hope to see you again soon."),
    (["I got the wrong item in order {oid}.", "Order {oid} contains a {product} I did not buy."],
     "we apologize for the mistake in order {oid}. The right item ships today."),
]


def support_example(pools, held, rng, letters=0.0):
    msgs, reply = rng.choice(SUPPORT_ISSUES)
    slots = {k: pools.pick(held, k, rng, letters) for k in ("oid", "product", "name")}
    msg = rng.choice(msgs).format(**slots)
    if rng.random() < 0.5:
        msg += " Thanks, {name}".format(**slots)
        greet = "Dear {name}, ".format(**slots)
    else:
        greet = "Dear customer, "
    return msg, greet + reply.format(**slots)


SKILL_GEN = {"sql": sql_example, "json": json_example, "support": support_example}


def skill_vocabulary():
    """Every literal word and punctuation run of the skills' templates: the
    base corpus uses them in its copying tasks (words, not formats)."""
    texts = []
    for qs, s in SQL_TEMPLATES:
        texts += qs + [s]
    for msgs, r in SUPPORT_ISSUES:
        texts += msgs + [r]
    texts += ["Dear customer, Thanks,", '{"name": "x", "age": 1}', '{"city": "y"}', "key=value"]
    texts += [k for k, _, _ in JSON_KEYS]
    words = set()
    for t in texts:
        t = re.sub(r"\{[a-z]+\}", " ", t)
        for w in re.findall(r"[A-Za-z]+|[^\sA-Za-z0-9]+", t):
            words.add(w)
    return sorted(words)




# --------------------------------------------------------------------------
# 3. values never seen in training, and the wider training draws
#
# demo/unseen.py makes prompts from UNSEEN: real first names, cities and
# everyday products (none made of the training syllables, none a training
# or held-out value), two-digit ages at the ends of the range and, for the
# numbers, held-out values with runs of one digit (77744). The adapters
# train with Wide, which draws from everything else: names and cities of
# one to four syllables or of random letters, products of 3 to 12 random
# letters, every two-digit age that is not unseen, numbers with runs, and
# json prompts of two to six pairs. A value of UNSEEN is never drawn by
# Wide (compared without case), nor by Pools' own training draws, and
# demo/train.py asserts that none occurs as a word in any training text.

UNSEEN_NAMES = [
    "Olivia", "Kenji", "Fatima", "Tobias", "Ingrid", "Mateo", "Priya", "Dmitri", "Aurelio",
    "Soledad", "Genevieve", "Harriet", "Benedikt", "Yusuf", "Camille", "Augustin", "Lucinda",
    "Svetlana", "Rosalind", "Emeka", "Joaquin", "Hiroshi", "Beatrix", "Florian", "Magnus",
    "Esperanza", "Wolfgang", "Gwendolyn", "Thaddeus", "Ximena", "Bjorn", "Padma", "Cosimo",
    "Ottilie", "Quentin", "Winifred", "Agnieszka", "Leopold", "Marisol", "Cornelius"]
UNSEEN_CITIES = [
    "Lisbon", "Nairobi", "Quito", "Osaka", "Tbilisi", "Winnipeg", "Valparaiso", "Marrakesh",
    "Reykjavik", "Ljubljana", "Kathmandu", "Bergen", "Cusco", "Hobart", "Tromso", "Windhoek",
    "Gdansk", "Antwerp", "Halifax", "Cordoba", "Tampere", "Zanzibar", "Dundee", "Bruges",
    "Mombasa", "Adelaide", "Oaxaca", "Trieste", "Salzburg", "Kyoto"]
UNSEEN_PRODUCTS = [
    "blanket", "stapler", "microwave", "keyboard", "sandal", "trumpet", "notebook",
    "flashlight", "suitcase", "whisk", "thermos", "skillet", "harmonica", "binoculars",
    "hairdryer", "doormat", "easel", "saucepan", "projector", "wheelbarrow", "cushion",
    "compass", "headphones", "violin", "hourglass", "toothbrush", "raincoat", "spatula",
    "telescope", "beanbag"]
UNSEEN_AGE_EDGES = ["13", "15", "17", "19", "90", "93", "96", "99"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def made_of(word, parts):
    """Whether word (any case) is a concatenation of parts."""
    return re.fullmatch("(?:" + "|".join(parts) + ")+", word.lower()) is not None


def has_run(v, n=3):
    """Whether v holds one character n times in a row (77744)."""
    return re.search(r"(.)" + r"\1" * (n - 1), v) is not None


class Unseen:
    """Values no training draw makes: a pick() like Pools' (held ignored)."""

    def __init__(self, pools):
        syll_city = SYLL + CITY_SUFFIX
        for w in UNSEEN_NAMES + UNSEEN_CITIES + UNSEEN_PRODUCTS:
            assert not made_of(w, SYLL) and not made_of(w, syll_city), f"{w} is syllable-made"
        train = set(v.lower() for vs in pools.train.values() for v in vs)
        held = set(v.lower() for vs in pools.held.values() for v in vs)
        for w in UNSEEN_NAMES + UNSEEN_CITIES + UNSEEN_PRODUCTS + UNSEEN_AGE_EDGES:
            assert w.lower() not in train and w.lower() not in held, f"{w} is a training value"
        oids = pools.held["oid"]
        amounts = pools.held["amount"]
        self.vals = {
            "name": UNSEEN_NAMES, "city": UNSEEN_CITIES, "product": UNSEEN_PRODUCTS,
            # the ends of the range and the held-out ages
            "age": UNSEEN_AGE_EDGES + pools.held["age"],
            "amount": amounts,
            "oid": oids,
        }
        self.runs = {"amount": [v for v in amounts if has_run(v, 2)],
                     "oid": [v for v in oids if has_run(v, 3)]}
        self.all = set(v.lower() for vs in self.vals.values() for v in vs)

    def pick(self, held, key, rng, letters=0.0):
        if key in self.runs and rng.random() < 0.5:
            return rng.choice(self.runs[key])
        return rng.choice(self.vals[key])

    def json_pairs(self, rng):
        return rng.randint(2, 6)


class Wide:
    """The adapters' training draws: wider than Pools' (which the base and
    the tokenizer were made with and stay as they were), never a held-out
    or unseen value."""

    def __init__(self, pools, unseen):
        self.p = pools
        self.never = set(v.lower() for vs in pools.held.values() for v in vs) | unseen.all
        self.ages = [str(a) for a in range(10, 100) if str(a).lower() not in self.never]
        self.runs = {"amount": [v for v in pools.train["amount"] if has_run(v, 2)],
                     "oid": [v for v in pools.train["oid"] if has_run(v, 3)]}

    def letters(self, rng, lo, hi):
        return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))

    def pick(self, held, key, rng, letters=0.0):
        assert not held
        while True:
            r = rng.random()
            if key == "name":
                v = (self.letters(rng, 3, 10) if r < 0.4 else
                     "".join(rng.choice(SYLL) for _ in range(rng.randint(1, 4))))
                v = v.capitalize()
            elif key == "city":
                v = (self.letters(rng, 4, 10) if r < 0.4 else
                     "".join(rng.choice(SYLL) for _ in range(2)) + rng.choice(CITY_SUFFIX))
                v = v.capitalize()
            elif key == "product":
                v = (self.letters(rng, 3, 12) if r < letters else
                     self.p.pick(False, key, rng))
            elif key == "age":
                v = rng.choice(self.ages)
            elif key in self.runs and r < 0.4:
                v = rng.choice(self.runs[key])
            else:
                v = rng.choice(self.p.train[key])
            if v.lower() not in self.never:
                return v

    def json_pairs(self, rng):
        return rng.randint(2, 6)
