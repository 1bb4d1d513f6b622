"""Generate the committed general-knowledge text used to measure forgetting.

What this writes
----------------
One file in its own raw landing folder (every file in a landing folder is
ingested, so no README or other non-data file lives there)::

    data/raw/general/general_text.txt

Plain ASCII, ``\\n`` line endings, one sentence or short paragraph per line,
no blank lines, no repeated lines, every line 6-40 words.

Why
---
Fine-tuning on the support tickets or on the made-up towns can make a model
worse at ordinary English ("catastrophic forgetting").  To measure that, the
same general text is run through the base model and the tuned model: for
encoders we compare the sentence embeddings (how far each one moved, and
whether each sentence keeps its nearest neighbours); for causal LMs we compare
the mean per-token loss on the text before and after tuning.  The text must
therefore have nothing to do with either tuning corpus: no billing, shipping,
accounts, technical problems or cancellations, and no towns, rivers,
festivals, roofs or founders.  Nothing is downloaded or copied; every sentence
is written here.

The corpus
----------
12 everyday topics, 38 lines each (456 lines)::

    cooking, weather, animals, gardening, sport, music, science, health,
    travel, school, chores, crafts

Each topic has 12 fixed hand-written sentences plus 26 lines built from
per-topic templates with slot word lists (a seeded random choice per slot).
Templates that state a fact take the subject and its predicate as one pair,
so every generated fact is true; the other templates describe everyday
habits, where any combination of the slot words is plausible.  Lines of one
topic share vocabulary and sentence shapes, so they form clear clusters in
embedding space (the nearest-neighbour measure relies on that), while
different topics share almost nothing.  The topics are interleaved: the file
is 38 rounds, each holding one line of every topic in a shuffled order, and
no two neighbouring lines share a topic.

Regenerate
----------
::

    python3 data/make_sample_general.py

Standard library only.  All randomness comes from one
``random.Random(20261128)`` and nothing iterates over sets, so the output is
byte-identical on every run.  The script checks the invariants above (and
that no line uses a word of the tuning corpora) before it writes, and prints
one line for the file.
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

SEED = 20261128
RAW_DIR = Path(__file__).resolve().parent / "raw"
OUT_PATH = RAW_DIR / "general" / "general_text.txt"
LINES_PER_TOPIC = 38
MIN_WORDS, MAX_WORDS = 6, 40
MIN_LINES, MAX_LINES = 400, 500
MAX_FILE_BYTES = 60_000

# Words of the two tuning corpora (support tickets, made-up towns), matched as
# whole words, case-insensitively; none may appear in the general text.
BANNED_WORDS = [
    # support tickets
    "account", "accounts", "app", "bill", "billed", "billing", "bug", "cancel", "cancelled",
    "cancellation", "charge", "charged", "checkout", "courier", "crash", "customer", "delivery",
    "delivered", "device", "discount", "email", "error", "invoice", "laptop", "log", "login",
    "order", "ordered", "package", "parcel", "password", "pay", "paid", "payment", "phone",
    "plan", "premium", "promo", "receipt", "refund", "shipment", "shipping", "subscription",
    "support", "ticket", "tickets", "tracking", "website",
    # made-up towns: the fact kinds and the names of their rivers
    "town", "towns", "river", "rivers", "festival", "festivals", "roof", "roofs", "founder",
    "founders", "founded", "valley", "neighbour", "neighbours",
    "wend", "lissel", "marrow", "sallow", "fenny", "quill", "dorran", "hollin", "tamber",
    "ellow", "brisk", "nettle",
]
# What the towns are famous for making (singular forms catch plurals too).
BANNED_PHRASES = [
    "copper kettle", "wool blanket", "glass lantern", "clay pot", "oak barrel", "honey cake",
    "silver bell", "linen shirt", "leather boot", "paper kite", "cheese wheel", "iron nail",
    "wooden toy", "wax candle", "reed basket", "straw hat", "brass key", "fishing net",
    "tin whistle", "apple pie",
]

# --------------------------------------------------------------------------
# Topics.  "fixed": hand-written lines, used as they are.  "templates": a
# template names its slots; "{x}" takes a string from slots["x"], "{x[0]}" and
# "{x[1]}" take the two halves of one pair from slots["x"].  Each slot is
# drawn once per line.  The first letter of a line is capitalised.
# --------------------------------------------------------------------------
TOPICS: dict[str, dict] = {
    "cooking": {
        "fixed": [
            "Bread dough rises because yeast produces carbon dioxide gas as it feeds on sugar.",
            "A pinch of salt can make the flavour of a sweet dish stronger.",
            "A sharp knife is safer than a blunt one because it is less likely to slip.",
            "White rice is often cooked in a covered pot with about one and a half to two times its volume of water.",
            "Onions are usually cooked slowly in oil or butter until they turn soft and golden.",
            "Raw chicken should always be cooked all the way through before it is eaten.",
            "Washing your hands before cooking helps keep germs out of the food.",
            "Soup tastes best when it is seasoned a little at a time and tasted as it cooks.",
            "An oven should be heated before a cake goes in, so that the cake bakes evenly.",
            "A squeeze of lemon juice stops sliced apples from turning brown so quickly.",
            "Fresh herbs such as parsley and basil are often added at the end of cooking to keep their taste.",
            "Pasta is cooked in plenty of boiling salted water and drained as soon as it is tender.",
        ],
        "templates": [
            "{cook} {dish} {when}.",
            "{cook} {dish} {when}, and everyone comes to the table hungry.",
            "To make {recipe[0]}, you need {recipe[1]}.",
            "An easy recipe for {recipe[0]} uses {recipe[1]}.",
        ],
        "slots": {
            "cook": ["My grandmother", "My older brother", "My aunt", "The cook at the corner cafe",
                     "My father", "My flatmate", "Our uncle"],
            "dish": ["bakes a loaf of brown bread", "makes a pot of vegetable soup",
                     "cooks a pan of fried rice", "roasts a tray of potatoes", "bakes a batch of oat biscuits",
                     "makes a big bowl of salad", "cooks a pot of lentil stew", "makes a stack of pancakes",
                     "stirs a pan of mushroom risotto"],
            "when": ["every Sunday morning", "on cold winter evenings", "when friends come to visit",
                     "on the first day of the holidays", "whenever there is a little spare time",
                     "for the family on Friday nights"],
            "recipe": [
                ("a simple omelette", "eggs, a little butter and a pinch of salt"),
                ("pancakes", "flour, eggs, milk and a little butter"),
                ("a basic tomato sauce", "tomatoes, onion, garlic and olive oil"),
                ("porridge", "rolled oats and milk or water"),
                ("shortbread", "flour, butter and sugar"),
                ("guacamole", "ripe avocados, lime juice, salt and chopped onion"),
                ("hummus", "chickpeas, tahini, lemon juice and garlic"),
                ("a vegetable stir fry", "sliced vegetables, oil, garlic and soy sauce"),
            ],
        },
    },
    "weather": {
        "fixed": [
            "In the Northern Hemisphere, summer begins in June and winter begins in December.",
            "When it is summer in Australia, it is winter in Canada.",
            "Rain falls when tiny water droplets in a cloud join together and become too heavy to float.",
            "Snow forms when the air in a cloud is cold enough for water to freeze into ice crystals.",
            "A rainbow can appear when the sun shines on falling rain while the sun is behind you.",
            "Thunder is the sound made by air that is heated very quickly by a flash of lightning.",
            "Light travels faster than sound, so we see lightning before we hear the thunder.",
            "Fog is a cloud that forms close to the ground.",
            "In autumn, the leaves of many trees turn yellow, orange or red before they fall.",
            "In spring, the days grow longer and the mornings become lighter.",
            "Weather forecasters use satellites, weather balloons and ground stations to predict the weather.",
            "Wearing several layers of clothing helps you stay warm on a cold and windy day.",
        ],
        "templates": [
            "{day}, the weather was {weather[0]}, so {weather[1]}.",
            "The forecast for {period} says {forecast}.",
            "In places with four seasons, {season[0]} is {season[1]}.",
        ],
        "slots": {
            "day": ["On Monday morning", "Yesterday afternoon", "Last weekend", "On the first day of spring",
                    "Early this morning", "All through Saturday"],
            "weather": [
                ("cold and frosty", "we wore thick coats and gloves"),
                ("hot and sunny", "we stayed in the shade and drank plenty of water"),
                ("wet and windy", "we took umbrellas and waterproof jackets"),
                ("foggy", "drivers switched on their lights and went slowly"),
                ("snowy", "the children built a snowman in the park"),
                ("mild and dry", "we hung the washing outside"),
                ("stormy", "everyone stayed indoors and listened to the rain"),
                ("bright but chilly", "we went for a walk in warm jumpers"),
            ],
            "period": ["tomorrow", "the weekend", "Tuesday", "Friday", "the rest of the week"],
            "forecast": ["light rain in the morning and sunshine later", "strong winds along the coast",
                         "clear skies and a cold night", "heavy showers and a chance of thunder",
                         "warm sunshine and a gentle breeze", "grey skies with a little drizzle",
                         "snow on high ground"],
            "season": [
                ("winter", "usually the coldest time of the year"),
                ("summer", "usually the warmest time of the year"),
                ("spring", "the time when many plants start to grow again"),
                ("autumn", "the time when many trees lose their leaves"),
            ],
        },
    },
    "animals": {
        "fixed": [
            "Whales and dolphins are mammals, so they breathe air and feed their young with milk.",
            "Bats are the only mammals that can truly fly.",
            "Spiders have eight legs, while insects have six.",
            "Penguins are birds that cannot fly, but they are excellent swimmers.",
            "Frogs begin life as tadpoles that live in water and breathe through gills.",
            "Bees collect nectar from flowers and turn it into honey.",
            "A caterpillar changes into a butterfly inside a hard case called a chrysalis.",
            "Camels can go for many days without drinking water.",
            "An octopus has eight arms and can change the colour of its skin.",
            "Most owls hunt at night and have very good hearing.",
            "Elephants are the largest land animals alive today.",
            "Dogs have a much stronger sense of smell than people do.",
        ],
        "templates": [
            "{animal[0]} {animal[1]}.",
            "A nature book explains that {animal[0]} {animal[1]}.",
            "Many people are surprised to learn that {animal[0]} {animal[1]}.",
            "{keeper} {pet} {when}.",
        ],
        "slots": {
            "animal": [
                ("cows", "eat grass and spend much of the day chewing"),
                ("horses", "can doze while standing up"),
                ("giraffes", "have very long necks that help them reach high leaves"),
                ("rabbits", "have front teeth that keep growing all their lives"),
                ("sharks", "are fish that breathe through gills, not mammals"),
                ("snakes", "use their tongues to pick up smells"),
                ("hedgehogs", "are covered in sharp spines"),
                ("squirrels", "bury nuts and seeds to eat later"),
                ("ants", "live together in large colonies"),
                ("parrots", "can copy sounds, including human speech"),
                ("tortoises", "can live for many decades"),
                ("kangaroos", "carry their young in a pouch"),
                ("polar bears", "have thick fur and a layer of fat that keep them warm"),
                ("chickens", "are birds that lay eggs with hard shells"),
                ("wolves", "often live and hunt in packs"),
            ],
            "keeper": ["My little sister", "My grandfather", "The boy next door", "My cousin", "My best friend"],
            "pet": ["feeds the cat", "walks the dog", "cleans out the rabbit hutch",
                    "changes the water in the fish tank", "brushes the old pony", "fills the bird feeder"],
            "when": ["every morning before school", "twice a day", "each Saturday", "after dinner",
                     "before breakfast"],
        },
    },
    "gardening": {
        "fixed": [
            "Plants use sunlight, water and carbon dioxide to make their own food.",
            "Most vegetables grow best in a sunny spot with rich, well drained soil.",
            "Earthworms help the soil by mixing it and letting air reach the roots.",
            "Compost is made from vegetable peelings, grass cuttings and dead leaves that slowly rot down.",
            "Seeds need water, air and warmth before they will sprout.",
            "Watering in the early morning or the evening means less water is lost to the heat of the day.",
            "Weeds compete with garden plants for light, water and food from the soil.",
            "Tomato plants often need a stake or a cane to hold them up as they grow.",
            "Bees and butterflies carry pollen from flower to flower.",
            "Sunflowers can grow taller than an adult person in a single summer.",
            "Potatoes are grown from small whole potatoes called seed potatoes.",
            "A layer of mulch on top of the soil keeps it moist and stops many weeds from growing.",
        ],
        "templates": [
            "{gardener} {task} {when}.",
            "In the vegetable garden, {plant[0]} {plant[1]}.",
            "A gardening book says that {plant[0]} {plant[1]}.",
        ],
        "slots": {
            "gardener": ["My grandmother", "The old man next door", "My mother", "A friend of ours",
                         "My uncle", "The school gardener"],
            "task": ["plants tomato seedlings in the greenhouse", "sows carrot seeds in neat rows",
                     "pulls the weeds from the vegetable patch", "mows the lawn",
                     "waters the pots of herbs on the balcony", "digs compost into the flower beds",
                     "rakes the fallen leaves into a pile", "ties the climbing beans to their poles"],
            "when": ["on Saturday mornings", "after work", "when the weather is dry",
                     "whenever there is a free hour", "before the sun gets too hot"],
            "plant": [
                ("carrots", "are root vegetables that grow under the ground"),
                ("lettuce", "grows quickly and is best picked while the leaves are young"),
                ("runner beans", "climb up poles or strings as they grow"),
                ("mint", "spreads quickly, so many gardeners grow it in a pot"),
                ("strawberries", "send out runners that grow into new plants"),
                ("apple trees", "blossom in spring and bear fruit later in the year"),
                ("garlic", "is grown from single cloves pushed into the soil"),
                ("pumpkins", "grow on long trailing vines"),
                ("lavender", "likes a sunny and dry spot"),
                ("tulips", "grow from bulbs that are planted in autumn"),
            ],
        },
    },
    "sport": {
        "fixed": [
            "A football team has eleven players on the pitch, including the goalkeeper.",
            "A marathon is just over 42 kilometres long.",
            "In tennis, a player must win at least four points and be two points ahead to win a game.",
            "In basketball, the hoop is about three metres above the floor.",
            "The Summer and Winter Olympic Games each take place every four years, two years apart.",
            "In a swimming relay, each swimmer waits until a teammate touches the wall before diving in.",
            "Warming up before exercise helps prepare the muscles and the heart for harder work.",
            "A cricket team has eleven players.",
            "Golfers try to get the ball into each hole using as few strokes as possible.",
            "In rugby union, each team has fifteen players on the field.",
            "Drinking water during long exercise replaces the fluid lost through sweat.",
            "Cyclists wear helmets to protect their heads if they fall.",
        ],
        "templates": [
            "{player} {sport} {when}.",
            "{moment} {action}",
        ],
        "slots": {
            "player": ["My brother", "Our coach", "My best friend", "My aunt", "The whole family",
                       "A girl from my street"],
            "sport": ["plays football in the park", "goes swimming at the local pool", "practises tennis serves",
                      "runs five kilometres", "plays basketball in the sports hall", "cycles along the coast path",
                      "trains with the hockey team", "plays table tennis"],
            "when": ["on Tuesday evenings", "every Saturday morning", "before work",
                     "during the summer holidays", "whenever the weather allows"],
            "moment": ["In the final minute of the match,", "Just before half time,", "Early in the second half,",
                       "After a long spell of pressure,", "Straight after the kick off,"],
            "action": ["the striker scored with a header from a corner.", "the goalkeeper made a brilliant save.",
                       "the captain hit the post with a powerful shot.",
                       "a defender cleared the ball off the line.",
                       "the referee blew the whistle for a penalty."],
        },
    },
    "music": {
        "fixed": [
            "A standard piano has 88 keys, 52 white and 36 black.",
            "Most acoustic and electric guitars have six strings.",
            "A violin is played with a bow that is usually made of wood and horsehair.",
            "An orchestra is usually made up of strings, woodwind, brass and percussion.",
            "Notes written on a stave tell a musician which pitch to play and for how long.",
            "A metronome clicks at a steady speed to help musicians keep time.",
            "A choir often sings in four parts: soprano, alto, tenor and bass.",
            "Drums are percussion instruments, which means they make a sound when they are struck.",
            "Singing together can lift people's mood and bring them closer.",
            "The flute is a woodwind instrument, even though modern flutes are usually made of metal.",
            "Practising a little every day usually works better than one long practice each week.",
            "A plucked string vibrates, and the vibration travels through the air as sound.",
        ],
        "templates": [
            "{musician} {practice} {when}.",
            "The {ensemble} performed {piece} {venue}.",
        ],
        "slots": {
            "musician": ["My sister", "My grandfather", "A friend of mine", "My son", "My cousin", "Our lodger"],
            "practice": ["practises the piano", "plays the guitar", "sings in a choir", "takes violin lessons",
                         "plays the drums in a small band", "listens to old jazz records",
                         "learns new songs on the ukulele", "plays the trumpet in a brass band"],
            "when": ["every evening after dinner", "on Thursday nights", "at the weekend",
                     "for half an hour a day", "whenever the house is quiet"],
            "ensemble": ["school orchestra", "brass band", "string quartet", "jazz trio"],
            "piece": ["a cheerful folk tune", "a slow and gentle lullaby", "a lively march",
                      "a well known piece by Mozart", "a medley of old love songs"],
            "venue": ["in the school hall", "at the community centre", "in the park on Sunday afternoon",
                      "at a wedding party", "on the local radio station"],
        },
    },
    "science": {
        "fixed": [
            "Water boils at 100 degrees Celsius at sea level.",
            "Pure water freezes at 0 degrees Celsius.",
            "The Earth travels around the Sun once a year.",
            "The Earth spins on its axis about once a day, which gives us day and night.",
            "The Moon does not make its own light; it reflects light from the Sun.",
            "Light from the Sun takes about eight minutes to reach the Earth.",
            "The air is mostly nitrogen, and oxygen makes up about a fifth of it.",
            "A magnet attracts iron but not copper or aluminium.",
            "Sound cannot travel through the empty space of a vacuum.",
            "Ice floats on water because it is less dense than liquid water.",
            "A glass prism splits white light into the colours of the rainbow.",
            "Gravity is the force that pulls objects toward the ground.",
        ],
        "templates": [
            "{fact[0]} {fact[1]}.",
            "A basic science book explains that {fact[0]} {fact[1]}.",
            "It is a simple scientific fact that {fact[0]} {fact[1]}.",
        ],
        "slots": {
            "fact": [
                ("the Sun", "is a star at the centre of our solar system"),
                ("Jupiter", "is the largest planet in our solar system"),
                ("Mercury", "is the planet closest to the Sun"),
                ("Mars", "looks red because of the iron oxide, or rust, in its dust"),
                ("diamonds", "are made of carbon atoms joined in a very strong pattern"),
                ("metals such as copper", "are good conductors of electricity"),
                ("rubber", "is a poor conductor of electricity, so it is used to cover wires"),
                ("salt", "dissolves in water, but sand does not"),
                ("a thermometer", "is used to measure temperature"),
                ("steam", "is water in the form of a gas"),
                ("the Moon", "takes about a month to travel around the Earth"),
                ("a year on Earth", "lasts about 365 and a quarter days"),
            ],
        },
    },
    "health": {
        "fixed": [
            "The heart pumps blood around the body through arteries and veins.",
            "An adult human skeleton usually has 206 bones.",
            "The lungs take in oxygen from the air and get rid of carbon dioxide.",
            "The skin is the largest organ of the human body.",
            "Getting enough sleep helps the body and the brain rest and recover.",
            "Washing your hands with soap and water helps stop the spread of many germs.",
            "Eating plenty of fruit and vegetables is part of a balanced diet.",
            "Regular exercise makes the heart and the muscles stronger.",
            "Brushing your teeth twice a day with fluoride toothpaste helps prevent tooth decay.",
            "Most adults have 32 teeth, including four wisdom teeth.",
            "The brain sends messages to the rest of the body along the nerves.",
            "Children have 20 baby teeth, which are later replaced by adult teeth.",
        ],
        "templates": [
            "{body[0]} {body[1]}.",
            "A health guide explains that {body[0]} {body[1]}.",
            "Doctors explain that {body[0]} {body[1]}.",
            "{person} {habit} {ending}.",
        ],
        "slots": {
            "body": [
                ("the stomach", "uses acid to help break down food"),
                ("the kidneys", "filter waste from the blood and make urine"),
                ("the liver", "helps clean the blood and stores energy"),
                ("muscles", "often work in pairs to move the bones"),
                ("calcium", "helps keep bones and teeth strong"),
                ("the small intestine", "absorbs most of the nutrients from food"),
                ("red blood cells", "carry oxygen around the body"),
                ("white blood cells", "help the body fight infections"),
                ("the ribs", "protect the heart and the lungs"),
                ("the skull", "protects the brain"),
                ("vitamin C", "helps cuts and wounds to heal"),
            ],
            "person": ["My mother", "My uncle", "My grandfather", "A friend of mine", "The man next door"],
            "habit": ["takes a long walk every day", "goes to bed at the same time each night",
                      "eats a piece of fruit with breakfast", "drinks a glass of water with every meal",
                      "stretches for ten minutes each morning", "takes the stairs instead of the lift"],
            "ending": ["to stay healthy", "because the doctor recommended it", "and feels much better for it",
                       "as part of a simple daily routine"],
        },
    },
    "travel": {
        "fixed": [
            "The Channel Tunnel carries trains under the sea between England and France.",
            "Sleeper trains have small cabins with beds so that passengers can travel overnight.",
            "A ferry carries passengers, and often cars, across a stretch of water.",
            "On a long train journey, many people read, sleep or watch the countryside go by.",
            "Seasickness happens when the eyes and the inner ear send the brain different signals about movement.",
            "Lighthouses help ships find their way and keep clear of dangerous rocks at night.",
            "The high speed trains of Japan are often called bullet trains.",
            "The captain of a ship is responsible for the safety of everyone on board.",
            "Passengers on a platform should stand behind the line until the train has stopped.",
            "The speed of a ship is often measured in knots, which are nautical miles per hour.",
            "The first public railway to use steam locomotives opened in England in 1825.",
            "On a ferry, the life jackets are kept where every passenger can find them quickly.",
        ],
        "templates": [
            "{train}, {train_view}.",
            "{sea}, {sea_view}.",
        ],
        "slots": {
            "train": ["On the early train to the coast", "On the slow train through the hills",
                      "On the express train to the capital", "On the overnight train",
                      "On the little mountain railway"],
            "train_view": ["we watched fields and farms roll past the window",
                           "we ate sandwiches from a paper bag", "a family played cards at the next table",
                           "I read half a novel before we arrived", "the carriage was warm and quiet",
                           "we shared a table with a friendly couple"],
            "sea": ["On the ferry to the island", "During the night crossing", "On the small boat around the bay",
                    "On the first morning of the sea voyage", "As the ship left the harbour"],
            "sea_view": ["we stood on deck and felt the salty wind", "we saw seabirds following us",
                         "the sea was calm and grey", "the waves made some passengers feel ill",
                         "we watched the coastline slowly disappear", "dolphins swam beside the boat"],
        },
    },
    "school": {
        "fixed": [
            "Reading every day helps children build a larger vocabulary.",
            "Taking short breaks while studying can help people concentrate for longer.",
            "A good way to learn new words in another language is to use them in your own sentences.",
            "Teachers often ask pupils to show their working in maths so that mistakes are easy to find.",
            "Public libraries let their members borrow books and bring them back a few weeks later.",
            "Times tables are easier to remember when they are practised a little each day.",
            "Many schools have a break in the middle of the morning so that pupils can rest and play.",
            "Group projects teach students how to share the work and listen to each other.",
            "Writing notes by hand can help people remember what they have heard.",
            "Testing yourself with flash cards is a simple way to revise for an exam.",
            "Asking questions in class is a good way to check that you have understood.",
            "The English alphabet has 26 letters.",
        ],
        "templates": [
            "{pupil} {study} {when}.",
            "In today's {lesson[0]} lesson, the class {lesson[1]}.",
            "The teacher set homework about {homework} for {due}.",
        ],
        "slots": {
            "pupil": ["My younger brother", "My cousin", "A girl in my class", "My best friend", "My son",
                      "The new boy in our class"],
            "study": ["practises spelling words", "reads a chapter of a story book", "revises for the history exam",
                      "does maths homework", "learns ten new French words", "writes a short diary entry",
                      "studies the map of Europe"],
            "when": ["after school", "every evening before dinner", "on the bus in the morning",
                     "in the school library at lunchtime", "with a little help from a parent"],
            "lesson": [
                ("history", "learned about daily life in ancient Rome"),
                ("geography", "drew maps of the oceans of the world"),
                ("maths", "practised adding fractions"),
                ("English", "read a poem aloud and talked about its meaning"),
                ("French", "learned how to count to twenty"),
                ("computing", "wrote a short program that draws shapes"),
            ],
            "homework": ["the Roman Empire", "fractions and decimals", "the parts of a plant", "a famous poem",
                         "the countries of Africa", "spelling rules"],
            "due": ["Monday", "next week", "the end of term", "Thursday"],
        },
    },
    "chores": {
        "fixed": [
            "Doing a few chores every day stops the housework from piling up at the weekend.",
            "Dark and light clothes are often washed separately so that colours do not run.",
            "Opening the windows for a few minutes each day lets fresh air into the house.",
            "Dusting from the top of a room downwards means falling dust lands where you have not cleaned yet.",
            "A cupboard is easier to keep tidy when everything in it has its own place.",
            "Vinegar mixed with water is a cheap way to clean windows.",
            "Making the bed each morning makes a bedroom look tidy straight away.",
            "In many homes, sorting the rubbish into recycling and general waste is part of the weekly routine.",
            "Washing hung outside on a sunny, breezy day dries quickly.",
            "Ironing is easier when clothes are still slightly damp.",
            "Sharing the housework fairly helps everyone in a family feel respected.",
            "A full dishwasher can use less water than washing the same dishes by hand.",
        ],
        "templates": [
            "{helper} {chore} {when}.",
            "A useful tip for {tip[0]} is to {tip[1]}.",
            "When it comes to {tip[0]}, it helps to {tip[1]}.",
        ],
        "slots": {
            "helper": ["My dad", "My sister", "My flatmate", "Everyone in our house", "My grandmother",
                       "My husband"],
            "chore": ["vacuums the living room carpet", "washes the dishes", "empties the bins",
                      "hangs the washing on the line", "cleans the bathroom", "sweeps the kitchen floor",
                      "irons the shirts", "changes the bed sheets", "dusts the bookshelves"],
            "when": ["every Saturday morning", "after dinner", "once a week", "before guests arrive",
                     "while listening to the radio"],
            "tip": [
                ("cleaning windows", "dry them with a soft cloth to avoid streaks"),
                ("washing dishes", "start with the glasses and finish with the greasiest pans"),
                ("folding laundry", "do it as soon as the clothes are dry"),
                ("cleaning the oven", "soak the racks in hot soapy water first"),
                ("tidying a messy room", "pick up one kind of thing at a time"),
                ("keeping the fridge clean", "wipe up spills as soon as they happen"),
            ],
        },
    },
    "crafts": {
        "fixed": [
            "Mixing blue and yellow paint makes green.",
            "Red, yellow and blue are often called the primary colours in painting.",
            "Watercolour paint is thinned with water and dries quickly on paper.",
            "Origami is the Japanese art of folding paper into shapes, traditionally without cutting or glue.",
            "Two knitting needles and a ball of yarn are all you need to start knitting a scarf.",
            "Clay has to be fired in a hot kiln to become hard, lasting pottery.",
            "A sketchbook is a handy place to practise drawing every day.",
            "A collage is made by sticking pieces of paper, fabric or photographs onto a surface.",
            "Mixing a colour with white makes a lighter shade of that colour.",
            "Sewing a button back onto a shirt needs only a needle, some thread and a little patience.",
            "Many painters learned their skills by copying the work of artists they admired.",
            "Pencils come in different grades, from hard ones that draw pale lines to soft ones that draw dark lines.",
        ],
        "templates": [
            "{maker} {craft} {when}.",
            "For this craft project you will need {materials}.",
            "The craft kit came with {materials}.",
        ],
        "slots": {
            "maker": ["My aunt", "My nephew", "My grandfather", "A friend from work", "My daughter",
                      "The lady upstairs"],
            "craft": ["paints watercolour pictures of flowers", "knits warm scarves for the family",
                      "makes birthday cards from coloured paper", "sketches portraits of friends",
                      "sews patchwork cushions", "makes bead necklaces", "folds paper cranes",
                      "draws comic strips with felt pens"],
            "when": ["in the evenings", "on rainy afternoons", "at a weekly art class", "during the holidays",
                     "in a quiet corner of the living room"],
            "materials": ["card, glue, scissors and some old magazines", "a needle, thread and scraps of fabric",
                          "poster paints, brushes and a jar of water", "coloured pencils and a sheet of thick paper",
                          "a ball of yarn and two knitting needles", "air drying clay and a few modelling tools",
                          "beads, string and a small pair of pliers"],
        },
    },
}


def _slot_names(template: str) -> list[str]:
    """Slot base names of a template, in order of first use ("x[0]" -> "x")."""
    names: list[str] = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field:
            base = field.split("[")[0]
            if base not in names:
                names.append(base)
    return names


def fill(rng: random.Random, template: str, slots: dict[str, list]) -> str:
    values = {name: rng.choice(slots[name]) for name in _slot_names(template)}
    line = template.format(**values)
    return line[0].upper() + line[1:]


def build_topic(rng: random.Random, topic: dict) -> list[str]:
    """The topic's fixed lines plus templated lines up to LINES_PER_TOPIC, shuffled."""
    lines = list(topic["fixed"])
    attempts = 0
    while len(lines) < LINES_PER_TOPIC:
        attempts += 1
        if attempts > 100_000:
            raise RuntimeError("templates cannot produce enough distinct lines")
        line = fill(rng, rng.choice(topic["templates"]), topic["slots"])
        if line not in lines:
            lines.append(line)
    rng.shuffle(lines)
    return lines


def interleave(rng: random.Random, per_topic: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(topic, line) pairs: rounds of one line per topic in shuffled order, no topic twice in a row."""
    names = list(per_topic)
    out: list[tuple[str, str]] = []
    for k in range(LINES_PER_TOPIC):
        order = names[:]
        rng.shuffle(order)
        if out and order[0] == out[-1][0]:
            order[0], order[-1] = order[-1], order[0]
        out.extend((name, per_topic[name][k]) for name in order)
    return out


def build() -> list[tuple[str, str]]:
    rng = random.Random(SEED)
    per_topic = {name: build_topic(rng, topic) for name, topic in TOPICS.items()}
    return interleave(rng, per_topic)


def check(rows: list[tuple[str, str]]) -> None:
    """Invariants the forgetting measure relies on; raises RuntimeError naming the first broken one."""
    lines = [line for _, line in rows]
    if not MIN_LINES <= len(lines) <= MAX_LINES:
        raise RuntimeError(f"{len(lines)} lines, expected {MIN_LINES}-{MAX_LINES}")
    if len(lines) != len(set(lines)):
        raise RuntimeError("lines must be unique")
    counts = {name: sum(1 for t, _ in rows if t == name) for name in TOPICS}
    if set(counts.values()) != {LINES_PER_TOPIC}:
        raise RuntimeError(f"uneven topics: {counts}")
    for (t1, _), (t2, _) in zip(rows, rows[1:]):
        if t1 == t2:
            raise RuntimeError(f"two neighbouring lines of topic {t1}")
    banned = re.compile(r"\b(" + "|".join(BANNED_WORDS) + r")\b", re.IGNORECASE)
    for line in lines:
        if not line.isascii() or not line.isprintable():
            raise RuntimeError(f"not plain printable ASCII: {line!r}")
        if line != line.strip() or "  " in line or not line:
            raise RuntimeError(f"blank line or stray whitespace: {line!r}")
        if not line[0].isupper() or line[-1] not in ".?!":
            raise RuntimeError(f"not a capitalised sentence with end punctuation: {line!r}")
        if not MIN_WORDS <= len(line.split()) <= MAX_WORDS:
            raise RuntimeError(f"{len(line.split())} words, expected {MIN_WORDS}-{MAX_WORDS}: {line!r}")
        hit = banned.search(line)
        if hit:
            raise RuntimeError(f"word of a tuning corpus {hit.group(0)!r}: {line!r}")
        for phrase in BANNED_PHRASES:
            if phrase in line.lower():
                raise RuntimeError(f"towns craft {phrase!r}: {line!r}")
    size = len("".join(line + "\n" for line in lines).encode("ascii"))
    if size > MAX_FILE_BYTES:
        raise RuntimeError(f"{size} bytes, over {MAX_FILE_BYTES}")


def write(rows: list[tuple[str, str]]) -> Path:
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    OUT_PATH.write_text("".join(line + "\n" for _, line in rows), encoding="ascii", newline="\n")
    return OUT_PATH


def report(path: Path, rows: list[tuple[str, str]]) -> None:
    n_lines = len(path.read_text(encoding="ascii").splitlines())
    words = sum(len(line.split()) for _, line in rows)
    print(f"{path.relative_to(RAW_DIR.parent.parent)}: {n_lines} lines, {path.stat().st_size} bytes, "
          f"{words} words, {len(TOPICS)} topics x {LINES_PER_TOPIC} lines")


def main() -> None:
    rows = build()
    check(rows)
    path = write(rows)
    report(path, rows)


if __name__ == "__main__":
    main()
