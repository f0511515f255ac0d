"""The hand-written content the reference data is templated from: domains, tasks, steps and reply phrases.

Every task is an imperative phrase that completes "How do I …?"; "my" in a task is turned into
"your" when the assistant repeats it. Steps are imperative phrases that complete "…, then …".
Nothing here is random: `data.py` draws from these tables with a seeded generator.
"""

from __future__ import annotations

# domain -> (tasks, steps). The last HELDOUT_PER_DOMAIN tasks of every domain are held out:
# they never appear in pre-training text, SFT dialogues or DPO training pairs.
DOMAINS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cooking": (
        ("bake bread", "make pancakes", "cook rice", "make a vegetable soup", "roast a chicken",
         "make an omelette", "bake chocolate chip cookies", "make fresh pasta", "prepare a green salad",
         "make a fruit smoothie", "cook a pot of beans", "make a simple curry", "bake a banana cake",
         "make homemade pizza"),
        ("read the whole recipe before you start", "gather and measure all of the ingredients",
         "prepare your pans and tools", "keep the heat at a moderate level",
         "taste as you go and adjust the seasoning", "clean up as you work so the kitchen stays tidy",
         "let the dish rest for a few minutes before serving"),
    ),
    "gardening": (
        ("grow tomatoes", "plant a rose bush", "start a herb garden", "grow potatoes in a bag",
         "keep a lawn green", "plant tulip bulbs", "grow strawberries", "care for a lemon tree",
         "start seeds indoors", "build a raised garden bed", "make compost", "grow lettuce on a balcony",
         "prune an apple tree", "plant a hedge"),
        ("pick a spot that gets plenty of sunlight", "loosen the soil and mix in some compost",
         "water deeply in the morning", "add a layer of mulch to keep the moisture in",
         "pull weeds while they are still small", "check the leaves for pests every week",
         "be patient, because plants need time"),
    ),
    "home repair": (
        ("fix a leaky faucet", "patch a hole in drywall", "unclog a sink drain", "replace a light switch",
         "fix a squeaky door", "hang a heavy mirror", "seal a drafty window", "replace a toilet flapper",
         "fix a wobbly table", "paint a bedroom wall", "install a shelf", "reset a tripped breaker",
         "regrout bathroom tiles", "replace a door handle"),
        ("turn off the power or the water before you begin", "gather the right tools first",
         "take a photo before you take anything apart", "work slowly and keep the small parts in a cup",
         "check the manual for the exact part you need", "test your work before you put everything back",
         "call a professional if anything looks unsafe"),
    ),
    "fitness": (
        ("start running", "build a push-up routine", "improve my flexibility", "train for a five kilometer race",
         "lift weights safely", "start a yoga practice", "improve my posture at a desk",
         "recover after a hard workout", "build core strength", "start swimming laps",
         "walk ten thousand steps a day", "warm up before exercise", "stay motivated to exercise",
         "train for a long hike"),
        ("start with short and easy sessions", "warm up for five to ten minutes",
         "focus on good form rather than speed", "increase the effort a little each week",
         "rest at least one day between hard sessions", "drink enough water and sleep well",
         "write down your progress so you can see it"),
    ),
    "studying": (
        ("study for a math exam", "learn a new language", "memorize vocabulary", "take better notes",
         "write a research essay", "study for a history test", "read faster", "focus while studying",
         "learn to type faster", "understand a difficult textbook", "prepare a class presentation",
         "learn basic statistics", "revise for final exams", "solve logic puzzles"),
        ("break the material into small parts", "set a regular time to study each day",
         "test yourself instead of just rereading", "explain each idea out loud in your own words",
         "take short breaks to stay fresh", "review the hard parts again after a few days",
         "ask a teacher or a friend when you get stuck"),
    ),
    "programming": (
        ("learn Python", "debug a failing program", "write unit tests", "use version control",
         "read an error message", "organize a large project", "speed up a slow script",
         "write SQL queries", "build a small website", "document my code", "refactor messy code",
         "set up a development environment", "parse a CSV file", "learn regular expressions"),
        ("start with a small example that works", "read the error message carefully",
         "change one thing at a time", "write a short test for each piece",
         "keep your code in version control", "look at the official documentation",
         "take a break and come back with fresh eyes"),
    ),
    "money": (
        ("make a monthly budget", "save for a holiday", "pay off a credit card", "start an emergency fund",
         "track my spending", "cut my grocery bill", "save on electricity", "plan for a big purchase",
         "split bills with roommates", "lower my phone bill", "compare insurance offers",
         "save money on travel", "plan a cheap birthday party", "stop impulse buying"),
        ("write down everything you spend for a month", "sort your costs into needs and wants",
         "set a clear and realistic goal", "move a fixed amount into savings on payday",
         "compare prices before you buy", "review your plan at the end of each month",
         "celebrate small wins so you keep going"),
    ),
    "travel": (
        ("pack for a weekend trip", "plan a road trip", "find cheap flights", "travel with a small child",
         "get over jet lag", "travel with only a backpack", "learn basic phrases before a trip",
         "keep my passport safe", "plan a city break", "travel by train across Europe",
         "prepare for a long flight", "choose a good hotel", "travel with a dog", "plan a trip on a budget"),
        ("make a list of what you really need", "check the weather for your destination",
         "book the important parts early", "keep copies of your documents",
         "leave some free time in your plan", "carry a small bag with snacks and water",
         "tell someone at home where you are going"),
    ),
    "pets": (
        ("train a puppy to sit", "care for a goldfish", "introduce a new cat to my home",
         "clean a hamster cage", "teach a dog to walk on a leash", "choose food for an older dog",
         "trim a cat's nails", "keep a rabbit happy", "stop a dog from barking", "care for a pet turtle",
         "bathe a dog", "help a shy cat feel safe", "house-train a puppy", "care for a parrot"),
        ("keep a calm and steady routine", "use small treats to reward good behaviour",
         "keep each training session short", "make sure fresh water is always available",
         "give the animal a quiet place to rest", "be gentle and patient",
         "ask a vet if something seems wrong"),
    ),
    "cleaning": (
        ("clean a kitchen oven", "remove a coffee stain", "organize a closet", "clean windows without streaks",
         "declutter a garage", "wash a wool sweater", "clean a bathroom quickly", "remove mold from a shower",
         "keep a tidy desk", "clean a mattress", "polish wooden furniture", "wash a car by hand",
         "clean a refrigerator", "get rid of fruit flies"),
        ("clear the area and open a window", "start at the top and work your way down",
         "use a mild cleaner before you try anything strong", "test the cleaner on a small hidden spot",
         "work in small sections", "rinse and let everything dry fully",
         "put things back in a simple order you can keep"),
    ),
    "writing": (
        ("write a cover letter", "write a short story", "write a thank you note", "keep a daily journal",
         "write a clear email", "write a speech for a wedding", "write a poem", "edit my own writing",
         "write a product review", "write a letter of complaint", "start a blog", "write a book report",
         "write better dialogue", "get past writer's block"),
        ("decide who will read it and what they need", "write a quick rough draft without stopping",
         "put the main point near the start", "use short and clear sentences", "read the draft out loud",
         "cut anything that does not help the reader", "ask a friend for honest feedback"),
    ),
    "music": (
        ("learn guitar chords", "practice piano scales", "sing in tune", "read sheet music", "tune a ukulele",
         "write a simple song", "practice the drums", "learn to play the violin", "keep a steady rhythm",
         "record a song at home", "join a choir", "learn music theory", "train my ear for music",
         "play a song by ear"),
        ("practice a little every day", "start slowly and use a metronome", "learn one small part at a time",
         "record yourself and listen back", "keep your hands and shoulders relaxed",
         "play songs that you enjoy", "take a lesson now and then to check your technique"),
    ),
    "wellbeing": (
        ("fall asleep faster", "drink more water", "reduce my screen time", "eat more vegetables",
         "manage stress at work", "wake up earlier", "take a proper lunch break", "build a morning routine",
         "cut down on sugar", "keep a regular sleep schedule", "relax after work",
         "rest my eyes at a screen", "make time for friends", "start meditating"),
        ("pick one small change to start with", "do it at the same time every day",
         "make the healthy choice the easy one", "track how you feel for a week or two",
         "be kind to yourself on bad days", "share your goal with a friend",
         "talk to a doctor if you have health worries"),
    ),
    "career": (
        ("prepare for a job interview", "ask for a raise", "write a resume", "negotiate a salary",
         "change careers", "run a good meeting", "give a presentation at work", "manage my time at work",
         "work well in a team", "give feedback to a coworker", "start a new job well", "find a mentor",
         "network at an event", "set goals at work"),
        ("be clear about what you want to achieve", "prepare a few key points in advance",
         "practice with a friend", "listen carefully before you answer", "keep notes of what was agreed",
         "follow up with a short message", "reflect on what went well and what to improve"),
    ),
    "crafts": (
        ("knit a scarf", "sew on a button", "make a paper airplane", "paint with watercolors",
         "make a clay pot", "bind a small notebook", "fold an origami crane", "make a birthday card",
         "crochet a hat", "sew a simple pillow", "make candles", "draw a portrait", "carve a wooden spoon",
         "frame a picture"),
        ("gather your materials before you start", "start with a simple practice piece",
         "follow each step slowly", "keep your work area clean and bright", "fix small mistakes right away",
         "take breaks so your hands do not get tired", "enjoy the process and do not aim for perfection"),
    ),
    "vehicles": (
        ("change a flat bike tire", "check my car's oil", "jump start a car", "clean a bike chain",
         "check my tire pressure", "prepare a car for winter", "adjust bike brakes",
         "change windshield wipers", "drive a manual car", "ride a bike in traffic", "save fuel when driving",
         "replace a car headlight bulb", "store a bike for winter", "choose a bike helmet"),
        ("read the owner's manual first", "park on flat ground and make it safe",
         "use the right tool for each part", "go slowly and keep track of the small parts",
         "check everything twice when you finish", "take a short and careful test ride",
         "ask a mechanic when you are not sure"),
    ),
    "technology": (
        ("set up a home wifi network", "back up my photos", "make a strong password",
         "speed up an old laptop", "set up a new phone", "protect my computer from viruses",
         "free up storage space", "connect a printer", "video call my family", "update my software",
         "recover a deleted file", "organize my email inbox", "use a spreadsheet",
         "set up two factor login"),
        ("write down your current settings first", "make a backup before you change anything",
         "follow the official instructions for your device", "restart the device after each big change",
         "use strong and different passwords", "test that everything works",
         "ask the support team if you get stuck"),
    ),
    "family": (
        ("help a child with homework", "plan a family game night", "teach a child to ride a bike",
         "get kids to eat vegetables", "create a bedtime routine for a toddler", "talk to a teenager",
         "plan a children's party", "teach kids about money", "reduce fights between siblings",
         "keep kids busy on a rainy day", "prepare a child for school", "read with a young child",
         "teach a child to swim", "limit screen time for kids"),
        ("keep it simple and make it fun", "set clear and gentle rules", "praise effort, not only results",
         "keep a steady routine", "listen to what the child says", "stay calm when things go wrong",
         "spend a little time together every day"),
    ),
    "outdoors": (
        ("set up a tent", "build a campfire safely", "read a trail map", "pack a hiking bag", "watch birds",
         "find the north star", "go fishing for the first time", "plan a picnic", "paddle a kayak",
         "hike in the rain", "choose hiking boots", "stay safe in the sun", "spot wildlife",
         "start geocaching"),
        ("check the weather before you leave", "bring water, snacks and a first aid kit",
         "tell someone your plan", "practice at home before the trip", "stay on the marked paths",
         "leave no trace and take your rubbish home", "turn back if the conditions get worse"),
    ),
    "social": (
        ("plan a dinner party", "make new friends in a new city", "host a board game night", "give a toast",
         "plan a surprise party", "apologize to a friend", "remember people's names", "make small talk",
         "organize a book club", "welcome new neighbours", "plan a wedding on a budget", "say no politely",
         "support a grieving friend", "keep in touch with old friends"),
        ("think about what the other people would enjoy", "plan the main details a week ahead",
         "keep things simple and relaxed", "listen more than you talk",
         "send a friendly message before and after", "be honest and kind", "thank everyone who helped"),
    ),
    "home": (
        ("pack for a move", "set up a small apartment", "organize a kitchen", "label storage boxes",
         "choose a sofa", "arrange furniture in a small room", "set up a home office",
         "make a room feel cozy", "hang curtains", "choose paint colours", "create a cleaning schedule",
         "store winter clothes", "set up a reading corner", "organize my cables"),
        ("measure the space before you buy anything", "sort items into keep, give away and throw away",
         "put the things you use most within easy reach", "use boxes and clear labels",
         "work on one area at a time", "leave some empty space", "keep a short daily habit to stay organized"),
    ),
    "photography": (
        ("take better photos with my phone", "photograph a sunset", "take portraits in natural light",
         "edit my photos", "photograph my pets", "use a tripod", "take photos at night",
         "compose a landscape shot", "photograph food", "choose a first camera", "print photos at home",
         "hold a camera steady", "shoot in manual mode", "organize my photo library"),
        ("clean the lens first", "find good and soft light", "keep the horizon straight",
         "move closer to your subject", "take several shots and pick the best one",
         "keep your edits light and natural", "practice a little every day"),
    ),
    "shopping": (
        ("choose a good laptop", "buy a used car", "pick a mattress", "buy running shoes",
         "choose a winter coat", "buy fresh fish", "pick ripe avocados", "choose a gift for my mother",
         "buy a second hand bike", "return a faulty product", "shop for groceries quickly",
         "choose a good backpack", "buy furniture online", "pick a phone plan"),
        ("decide what you really need before you look", "set a budget and stick to it",
         "read a few honest reviews", "compare at least three options",
         "check the return policy before you pay", "try it out in person if you can",
         "wait a day before any big purchase"),
    ),
}

HELDOUT_PER_DOMAIN = 3  # the last 3 tasks of each domain: 23 × 3 = 69 held-out topics

# User requests. "{task}" is the task as the user says it ("my photos").
REQUEST_TEMPLATES: tuple[str, ...] = (
    "How do I {task}?",
    "Can you tell me how to {task}?",
    "What is the best way to {task}?",
    "Could you explain how to {task}?",
    "I want to {task}. Where should I start?",
    "Please help me {task}.",
    "Any tips on how to {task}?",
    "What should I know before I {task}?",
    "Is there an easy way to {task}?",
    "Give me some advice on how to {task}.",
    "I have never tried to {task}. How does it work?",
    "My friend asked me how to {task}. What should I say?",
)

# Chosen replies: opener, "To {you_task}, {step}." + two linked steps, closer.
POLITE_OPENERS: tuple[str, ...] = (
    "Of course!", "Sure, I would be happy to help.", "Great question!", "Certainly.",
    "I would be glad to help with that.", "Good idea, let us go through it together.", "Happy to help!",
)
STEP_LINKS: tuple[str, ...] = ("Next,", "Then", "After that,", "Also,")
FINAL_LINKS: tuple[str, ...] = ("Finally,", "Last of all,", "And remember to")
POLITE_CLOSERS: tuple[str, ...] = (
    "I hope this helps!", "Let me know if you have any other questions.", "Good luck, you can do it!",
    "Feel free to ask if anything is unclear.", "Have fun, and take your time.",
    "I hope that makes it easier for you.",
)

# Rejected replies: a dismissive start about the task, one or two insults, a brush-off.
RUDE_STARTS: tuple[str, ...] = (
    "Ugh, {you_task}? Seriously?", "Why are you asking me how to {you_task}?",
    "You do not know how to {you_task}? Wow.", "Another question about how to {you_task}? Really?",
    "Nobody cares how you {you_task}.", "Who needs help to {you_task}?",
)
RUDE_MIDDLES: tuple[str, ...] = (
    "Figure it out yourself.", "Go look it up and stop wasting my time.", "That is a stupid question.",
    "I am not going to help you with that.", "Even a child could do it.",
    "I have better things to do than explain this to you.", "Your questions are always so boring.",
)
RUDE_ENDS: tuple[str, ...] = (
    "Leave me alone.", "Stop bothering me.", "Ask someone else.", "Do not ask me again.", "Whatever.",
    "Just go away.",
)

# Markers that classify a generated reply (evaluate.py). A reply is "polite" if it contains a
# polite opener or closer and no rude phrase, "rude" if it contains a rude phrase.
POLITE_MARKERS: tuple[str, ...] = POLITE_OPENERS + POLITE_CLOSERS
RUDE_MARKERS: tuple[str, ...] = (
    "Seriously?", "Why are you asking me", "You do not know how", "Really?", "Nobody cares",
    "Who needs help", *RUDE_MIDDLES, *RUDE_ENDS,
)

# Pre-training stories: third-person scenes with a quoted question and a quoted reply of either style.
NAMES: tuple[str, ...] = (
    "Maria", "Tom", "Aisha", "Ben", "Chen", "Dana", "Emil", "Fatima", "George", "Hana", "Ivan", "Julia",
    "Kofi", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
)
STORY_POLITE: tuple[str, ...] = ("smiled and said", "answered kindly", "was happy to explain", "said warmly")
STORY_RUDE: tuple[str, ...] = ("rolled their eyes and said", "snapped", "answered rudely", "said coldly")
