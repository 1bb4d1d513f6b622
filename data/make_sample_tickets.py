"""Generate the committed sample corpus of customer-support tickets.

What this writes
----------------
Two CSV files in ``data/raw/tickets/`` (the raw landing folder; every file in
it is ingested, so no README or other non-data file lives there):

* ``tickets_2026_10.csv``
* ``tickets_2026_11.csv``

Each file is UTF-8, written with :mod:`csv` (``\\n`` line endings, minimal
quoting), with the header ``ticket_id,label,text``.  ``ticket_id`` looks like
``T-2026-10-00001`` and is unique across both files.

The corpus
----------
English support tickets sent to a fictional online shop that also sells a
subscription/SaaS product.  Single-label intent classification with exactly
five labels::

    billing, shipping, account_access, technical_issue, cancellation

Every label gets 340 clean rows (170 per file).  Texts are built from 31-32
templates per label plus slot fillers (order numbers, amounts, dates, products,
plans, carriers, devices, error codes, ...), varied openings and sign-offs,
three tones (polite, angry, terse), optional extra context sentences and
occasional typos (about 3.5% of rows).  Clean texts are 6-45 words long.
Vocabulary deliberately overlaps between labels ("refund" in billing and
cancellation, "app" in technical_issue and account_access, "order" in
shipping/billing/cancellation, "charged" in billing and cancellation, ...).
14 rows per label (about 4%) are deliberately hard: they mention another topic
in passing but are labelled by their main intent.

Deliberately messy rows (24 in total, about 1.4%, spread over both files) so
that the cleaning step has something to show:

* 8 exact duplicates of earlier rows (same text and label, new ticket_id),
  two of them in the November file duplicating October rows;
* 6 near-duplicates of earlier rows that differ only in whitespace (double
  spaces, a tab, a non-breaking space U+00A0, leading/trailing blanks), same
  label; collapsing whitespace makes them identical to their source;
* 4 rows whose text is empty or whitespace-only;
* 3 rows whose label is a typo outside the label set (``biling``, ``shiping``,
  ``cancelation``);
* 2 rows with an empty label;
* 1 ``technical_issue`` row whose text is a pasted log of more than 2,500
  characters.

No text contains a raw newline.

Regenerate
----------
::

    python3 data/make_sample_tickets.py

Standard library only.  All randomness comes from one
``random.Random(20261126)`` and nothing iterates over sets, so the output is
byte-identical on every run.  The script prints row counts per file and per
label, and the number of messy rows of each kind.
"""

from __future__ import annotations

import csv
import random
import string
from collections import Counter
from pathlib import Path

SEED = 20261126
OUT_DIR = Path(__file__).resolve().parent / "raw" / "tickets"
LABELS = ["billing", "shipping", "account_access", "technical_issue", "cancellation"]
MONTHS = [10, 11]  # one output file per month
CLEAN_PER_LABEL_PER_FILE = 170
HARD_PER_LABEL_PER_FILE = 7
MIN_WORDS, MAX_WORDS = 6, 45
TYPO_RATE = 0.035
FIELDS = ["ticket_id", "label", "text"]

# --------------------------------------------------------------------------
# Slot fillers
# --------------------------------------------------------------------------
PRODUCTS = [
    "wireless headset", "standing desk", "yoga mat", "4K monitor", "pair of hiking boots",
    "phone case", "coffee grinder", "desk lamp", "mechanical keyboard", "backpack",
    "smart thermostat", "Bluetooth speaker", "winter jacket", "water bottle", "blender",
    "robot vacuum", "tablet stand", "kettle", "duvet cover", "webcam", "gaming mouse",
    "throw blanket", "pair of running shoes", "cast iron pan", "dining chair",
    "camping tent", "baby monitor", "laptop sleeve", "stand mixer", "gift box",
]
PLANS = [
    "Pro plan", "Premium membership", "Plus subscription", "Family plan", "Team plan",
    "annual plan", "monthly plan", "Business plan", "Starter plan",
]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS", "Royal Mail", "DPD", "Evri", "Canada Post"]
COUNTRIES = [
    "Canada", "Germany", "Ireland", "Australia", "Mexico", "Norway", "Japan",
    "the Netherlands", "Switzerland", "New Zealand", "Brazil", "Poland",
]
CITIES = [
    "Denver", "Leeds", "Toronto", "Austin", "Glasgow", "Portland", "Melbourne",
    "Dublin", "Chicago", "Bristol", "Vancouver", "Phoenix", "Cork", "Seattle",
]
DEVICES = [
    "iPhone 14", "iPhone 15 Pro", "Pixel 8", "Samsung Galaxy S23", "iPad", "MacBook Air",
    "Windows laptop", "Chromebook", "OnePlus 11", "Galaxy Tab", "work PC",
]
BROWSERS = ["Chrome", "Firefox", "Safari", "Edge", "Brave"]
ERRORS = [
    "error 500", "error 502 Bad Gateway", "error code E1042", "ERR_CONNECTION_RESET",
    "a 403 error", "a timeout error", '"Something went wrong" (code 7)',
    "error 0x80070005", "a null reference error", "NETWORK_ERROR", "error 429",
    "a blank error popup",
]
FEATURES = [
    "CSV export", "dashboard", "wishlist", "order history page", "search bar",
    "calendar sync", "barcode scanner", "reports page", "file uploader",
    "notification settings", "checkout page", "saved addresses page", "photo upload",
]
VERSIONS = ["4.12.0", "4.12.1", "5.0", "5.0.2", "5.1.0", "3.9.7"]
IOS_VERSIONS = ["18.1", "18.0.1", "17.6", "18.2"]
CARDS = ["Visa", "Mastercard", "Amex", "debit card", "credit card", "PayPal account"]
PROMOS = ["FALL20", "WELCOME10", "BLACKFRIDAY", "FREESHIP", "OCTSAVE15", "NOV25", "VIP30"]
FIRST_NAMES = [
    "Maria", "Dave", "Priya", "Tom", "Aisha", "Lukas", "Chen", "Sofia", "James",
    "Fatima", "Ben", "Olga", "Marcus", "Hannah", "Diego", "Kate", "Yusuf", "Emma",
    "Raj", "Nina", "Sam", "Grace", "Omar", "Lena",
]
SURNAMES = ["r", "k", "smith", "patel", "nguyen", "obrien", "meyer", "garcia", "lee", "walsh"]
EMAIL_DOMAINS = ["example.com", "example.net", "example.org", "mail.example.com"]
USERNAMES = ["jdoe88", "maria_k", "tomhunt", "greenleaf42", "sam.p", "kbird", "nightowl_7", "dlo2020"]
MONTH_NAMES = {
    7: ("Jul", "July"), 8: ("Aug", "August"), 9: ("Sep", "September"),
    10: ("Oct", "October"), 11: ("Nov", "November"),
}
CURRENCIES = ["$"] * 6 + ["€", "£", "USD"]


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class Filler:
    """Produces slot values; all randomness goes through one Random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def order(self) -> str:
        r = self.rng
        kind = r.randrange(4)
        if kind == 0:
            return f"#{r.randint(100000, 999999)}"
        if kind == 1:
            return f"ORD-{r.randint(200000, 299999)}"
        if kind == 2:
            return str(r.randint(40000000, 49999999))
        return f"BC-{r.randint(1000, 9999)}-{r.randint(1000, 9999)}"

    def amount(self) -> str:
        r = self.rng
        value = r.choice([r.randint(5, 60), r.randint(20, 150), r.randint(100, 450)])
        cents = r.choice(["99", "00", "50", "95", "49", f"{r.randint(0, 99):02d}"])
        cur = r.choice(CURRENCIES)
        if cur == "USD":
            return f"{value}.{cents} USD"
        return f"{cur}{value}.{cents}"

    def higher_amount(self, amount: str) -> str:
        r = self.rng
        number = amount.split()[0].lstrip("$€£")
        value = float(number) + r.randint(3, 120) + r.choice([0, 0.5, 0.49, 0.01])
        text = f"{value:.2f}"
        if amount.endswith(" USD"):
            return f"{text} USD"
        return amount[0] + text

    def date(self, month: int) -> str:
        r = self.rng
        m = month if r.random() < 0.75 else month - 1
        d = r.randint(1, 28)
        short, long_ = MONTH_NAMES[m]
        kind = r.randrange(5 if m == month else 4)
        if kind == 0:
            return f"{short} {d}"
        if kind == 1:
            return f"{long_} {d}"
        if kind == 2:
            return f"{m}/{d}"
        if kind == 3:
            return f"{d} {long_}"
        return f"the {_ordinal(d)}"

    def month_name(self, month: int) -> str:
        return MONTH_NAMES[month - self.rng.randint(1, 3)][1]

    def email(self) -> str:
        r = self.rng
        first = r.choice(FIRST_NAMES).lower()
        sep = r.choice([".", "_", ""])
        tail = r.choice(SURNAMES + [str(r.randint(10, 99))])
        return f"{first}{sep}{tail}@{r.choice(EMAIL_DOMAINS)}"

    def tracking(self) -> str:
        r = self.rng
        kind = r.randrange(3)
        if kind == 0:
            alnum = string.ascii_uppercase + string.digits
            return "1Z" + "".join(r.choice(alnum) for _ in range(16))
        if kind == 1:
            return "".join(r.choice(string.digits) for _ in range(12))
        return f"JD01460{r.randint(10000000, 99999999)}"

    def value(self, name: str, month: int) -> str:
        r = self.rng
        base = name.rstrip("2")
        simple = {
            "product": PRODUCTS, "plan": PLANS, "carrier": CARRIERS, "country": COUNTRIES,
            "city": CITIES, "device": DEVICES, "browser": BROWSERS, "error": ERRORS,
            "feature": FEATURES, "version": VERSIONS, "ios": IOS_VERSIONS, "card": CARDS,
            "promo": PROMOS, "name": FIRST_NAMES, "username": USERNAMES,
        }
        if base in simple:
            return r.choice(simple[base])
        if base == "order":
            return self.order()
        if base == "amount":
            return self.amount()
        if base == "date":
            return self.date(month)
        if base == "month":
            return self.month_name(month)
        if base == "email":
            return self.email()
        if base == "tracking":
            return self.tracking()
        if base == "last4":
            return f"{r.randint(0, 9999):04d}"
        if base == "n_days":
            return str(r.randint(3, 21))
        if base == "n":
            return str(r.randint(2, 4))
        if base == "years":
            return str(r.randint(2, 9))
        raise KeyError(f"unknown slot {name!r}")

    def fill(self, template: str, month: int) -> str:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        # Fill base slots before their "...2" partners (stable, deterministic).
        names.sort(key=lambda f: f.endswith("2"))
        values: dict[str, str] = {}
        for name in names:
            if name in values:
                continue
            if name == "amount2" and "amount" in values:
                # Same currency as {amount} and always higher, so templates
                # like "I paid {amount}, I expected {amount2}" read right.
                values[name] = self.higher_amount(values["amount"])
                continue
            value = self.value(name, month)
            # "product2" and "order2" must differ from their base slot.
            if name.endswith("2") and name[:-1] in values:
                while value == values[name[:-1]]:
                    value = self.value(name, month)
            values[name] = value
        return template.format(**values)


# --------------------------------------------------------------------------
# Templates.  A leading "A|", "P|" or "T|" fixes the tone (angry, polite,
# terse); otherwise the tone is drawn at random.
# --------------------------------------------------------------------------
TEMPLATES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for order {order}. Can you refund the duplicate payment of {amount}?",
        "My card was charged {amount2} but my order total was {amount}. Why the difference?",
        "Can I get an invoice for order {order}? I need it for my company's expense report.",
        "There's a charge of {amount} on my {card} statement from you that I don't recognize.",
        "I used the promo code {promo} but the discount wasn't applied to my order, so I paid full price.",
        "The VAT on my invoice looks wrong. Can you send a corrected invoice with our company tax ID?",
        "My payment keeps getting declined at checkout even though my {card} works everywhere else.",
        "I was billed for the {plan} but I'm on the Starter plan. Please correct the charge.",
        "Please update the billing address on my account, the invoices still show my old address in {city}.",
        "You said the refund for order {order} was processed on {date} but I still haven't received it.",
        "How do I change the card on file? My old {card} ending in {last4} expired.",
        "I got charged a late fee of {amount} even though I paid on time.",
        "Why did my subscription price go up from {amount} to {amount2} this month? I never got a notice.",
        "I was charged for shipping on order {order} even though it was over the free shipping threshold.",
        "The receipt for order {order} shows the wrong amount. I paid {amount}, not {amount2}.",
        "There is still a pending authorization of {amount} on my card {n_days} days after checkout failed. When will it drop off?",
        "Could you split the payment for order {order} between two cards?",
        "My gift card balance didn't apply at checkout, I was charged the full {amount} to my card instead.",
        "I need copies of all invoices from the last {n} months for our accountant.",
        "I was overcharged on my annual renewal. The price on your website is {amount} but I paid {amount2}.",
        "The price dropped a day after I bought the {product}. Do you offer a price adjustment?",
        "Store credit from my return hasn't shown up on my account yet. It should be {amount}.",
        "A|Double charge AGAIN. {amount} taken twice on {date}. Give me my money back.",
        "T|why was i charged {amount} on {date}",
        "Can we pay by bank transfer instead of card for the {plan}? Our finance team needs a PO and an invoice first.",
        "The partial refund for the damaged {product} was only {amount}. I expected {amount2}.",
        "I was charged in USD instead of EUR and my bank added a conversion fee. Can you refund the difference?",
        "Is there a way to get monthly invoices emailed to our finance team automatically?",
        "The tax on order {order} seems too high. Can someone explain the breakdown?",
        "Still waiting on the refund for order {order}. It's been {n_days} days since you confirmed it.",
        "Please remove my old {card} from the saved payment methods, I don't want it stored.",
        "T|invoice for order {order} please, need the company name on it",
    ],
    "shipping": [
        "Where is my order {order}? Tracking hasn't updated since {date}.",
        "My {product} was supposed to arrive on {date} and it's still not here.",
        "Tracking says delivered but there's no package at my door or with my neighbors.",
        "{carrier} says the address is incomplete for order {order}. Can you add my apartment number?",
        "Can I change the shipping address on order {order}? I'm moving to {city} next week.",
        "The box arrived crushed and the {product} inside is damaged.",
        "I only received part of my order. The {product} is missing from the box.",
        "Do you ship to {country}? I can't select it at checkout.",
        "How long does standard shipping usually take to {city}?",
        "I paid for express delivery but order {order} has been in transit for {n_days} days.",
        "I received the wrong item. I ordered a {product} and got a {product2} instead.",
        "Can you send me the tracking number for order {order}? The confirmation email didn't include one.",
        "My package is stuck in customs in {country}. Do I need to pay duties or will you handle it?",
        "{carrier} left a notice but I'm never home during the day. Can the parcel be redirected to a pickup point?",
        "T|tracking number for {order} doesnt work on the {carrier} site",
        "A|It's been {n_days} days. Where is my stuff?? Order {order}.",
        'Order {order} has said "label created" for a week. Has it actually been shipped?',
        "Is it possible to combine orders {order} and {order2} into one shipment?",
        "My order was marked as returned to sender. I never refused it. Can you reship it?",
        "The delivery driver left my {product} in the rain and the box was soaked through.",
        "Can I pick up my order from your warehouse instead of waiting for delivery?",
        "I need the {product} before {date} for a birthday. Is there any faster shipping option?",
        "The estimated delivery keeps moving. First it was {date}, now it says next week.",
        "My package was delivered to the wrong address, a house on the next street got it.",
        "Why was my order split into {n} separate packages? Only one has arrived so far.",
        "Do you offer free shipping on larger orders? I'm in {country}.",
        "The return label you sent doesn't work at the {carrier} drop-off. How do I send the {product} back?",
        "Has order {order} left the warehouse yet? It's been processing since {date}.",
        "A signature was required but nobody tried to deliver, {carrier} just marked it as a failed attempt.",
        "A|Package arrived EMPTY. The box was sealed but there's nothing inside. Order {order}.",
        "I'd like to schedule delivery of the {product} for a weekend, is that possible?",
    ],
    "account_access": [
        "I can't log in to my account. It says my password is incorrect but I'm sure it's right.",
        "The password reset email never arrives. I've checked spam too.",
        "My account is locked after too many login attempts. How do I unlock it?",
        "I lost my phone and can't get the two-factor code. How can I access my account?",
        "I need to change the email on my account from {email} but I can't access that inbox anymore.",
        "Someone changed my password and email without my permission. I think my account was hacked.",
        "The verification code you send by SMS expires before it reaches me.",
        "I can't sign in with Google anymore on the app, it just loops back to the login screen.",
        "I created an account with {email} but it says no account exists when I try to log in.",
        "How do I reset my password? The forgot password link isn't on the mobile app.",
        "My account was deactivated and I don't know why. I'd like access restored.",
        "The reset link says it has expired, even when I click it right away.",
        "I have two accounts by mistake, can you merge them? I can only log in to one.",
        "I can't remember which email I used to sign up. My name is {name} and I ordered a {product} in {month}.",
        'I get "account suspended" when I log in. What did I do?',
        "T|locked out again. reset link not working",
        "Why do I have to verify my identity every single time I log in? It asks for a new code every time.",
        "I changed my phone number and now the 2FA codes go to the old number.",
        "My colleague left the company and we need access to the team account she owned.",
        "I never got the account activation email, so I can't finish signing up.",
        'A|It keeps saying "invalid username or password" even after I reset it {n} times!',
        "Please remove the old email from my profile, someone else seems to be able to log in with it.",
        "Is there a way to log out all other sessions? I logged in on a public computer in {city}.",
        "The security questions I set up years ago don't work anymore and I'm locked out.",
        "I got an email about a login from {country} that wasn't me. How do I secure my account?",
        "Can I switch my login from Facebook to a normal email and password? My Facebook account is deleted.",
        "I invited a new member to our {plan} workspace but they can't accept the invite, it says the link is invalid.",
        "My authenticator app was reset and I don't have backup codes. Please help me get back in.",
        'I\'m stuck on the "verify your email" page even though I clicked the link in the email.',
        "A|Username taken?? It's MY username, I had an account before. How do I recover it?",
        "I can log in on the website but the app says my credentials are wrong.",
    ],
    "technical_issue": [
        "The app crashes every time I open it on my {device}.",
        "I get {error} when I try to upload a file.",
        "The checkout page won't load in {browser}, just a spinning wheel.",
        "Push notifications stopped working after the latest update.",
        "The {feature} is broken, nothing happens when I click it.",
        "Data isn't syncing between the app and the website. Changes on my {device} don't show up on desktop.",
        "Your website is really slow today, pages take 30 seconds to load.",
        "Export to CSV produces an empty file every time.",
        "Search results are completely wrong, searching for a {product} shows random items.",
        "The app freezes on the splash screen since version {version}.",
        "I keep getting {error} on the dashboard. I cleared the cache and tried {browser}, same thing.",
        "Images aren't loading on the product pages, just broken image icons.",
        "The add to cart button doesn't do anything on mobile.",
        "Dark mode makes the text unreadable, it's black on dark gray.",
        "The API has returned {error} for every request since {date}. Our integration is down.",
        "After updating to iOS {ios}, the app won't open at all.",
        "Your site shows {error} when I try to save my settings.",
        "The page keeps reloading in a loop when I open the {feature}.",
        "The app drains my battery like crazy, I lost 40% in an hour with it running in the background.",
        "A|Broken again, getting {error}. Fix your servers.",
        "The chart on the dashboard shows wrong numbers for last week.",
        "The app logs me out randomly every few minutes while I'm using it.",
        "Webhooks stopped firing for new orders around {date}.",
        "The page layout is broken on my {device}, buttons overlap and I can't scroll.",
        "Video tutorials won't play, just a black screen with sound.",
        "The promo code field throws an error instead of applying the code.",
        "I can't attach photos to my review, the upload fails at 99%.",
        "The barcode scanner in the app doesn't recognize anything.",
        "Email notifications arrive with broken formatting and weird symbols everywhere.",
        "The order history page is blank in the app, though the website shows all my orders.",
        "T|getting {error} when opening the app, reinstalled already",
    ],
    "cancellation": [
        "Please cancel my subscription, effective immediately.",
        "How do I cancel my {plan}? I can't find the option anywhere.",
        "I want to cancel order {order}, I ordered the wrong size.",
        "Cancel my account and delete all my data, please.",
        "I'd like to cancel my order {order} before it ships.",
        "I canceled my subscription on {date} but I was still charged {amount}. Please refund it and confirm the cancellation.",
        "I no longer need the {product}, can you cancel the order and refund me?",
        "Please don't renew my {plan}. I want it to end at the end of this billing period.",
        "I want to end my free trial before I get charged.",
        "How can I close my account permanently?",
        "Cancel order {order} please. Found it cheaper elsewhere.",
        'I tried to cancel online but the button just takes me to an "are you sure" page that loops.',
        "A|Stop my membership. I've asked twice now!!",
        "I accidentally ordered two of the {product}. Please cancel one of them.",
        "We're moving to another tool, please cancel our {plan} at the end of the month.",
        "Is there a cancellation fee if I end my annual plan early?",
        "T|pls cancel my subscription, dont want it anymore",
        "I need to close my late father's account and stop any recurring orders.",
        "Please cancel my monthly box, I'll be traveling for {n} months.",
        "I cancelled order {order} within an hour but it still says processing. Is it cancelled?",
        "You keep sending me renewal reminders. I already cancelled. Please confirm my account is closed.",
        "I want to unsubscribe from the {plan} and get a prorated refund for the remaining months.",
        "Can I cancel just one item from order {order} and keep the rest?",
        "T|not worth the price anymore. cancel my plan",
        "Please turn off auto-renewal on my account, I'll renew manually if I want to.",
        "I signed up by mistake. Please cancel it and make sure I'm not charged.",
        "A|Done with this service. Terminate my account and stop charging my card.",
        "I'd like to cancel my pre-order for the {product}.",
        "Please cancel my recurring order of the {product}, I have plenty now.",
        "Cancel my account today please. I won't be charged again after this, right?",
        "The cancel button in settings is greyed out. How do I cancel my {plan}?",
    ],
}

# About 4% of rows per label: a second topic is mentioned in passing, but the
# main intent (and the label) is unambiguous.
HARD_TEMPLATES: dict[str, list[str]] = {
    "billing": [
        "The package for order {order} arrived fine, no complaints there. But I was charged {amount} twice for it, please refund one.",
        "I'm not cancelling anything, I just need the invoice for last month's {plan} payment with our VAT number on it.",
        "The app works great, but the in-app purchase was charged at {amount} and the receipt says {amount2}. Which one is right?",
        "I returned the {product} and the return label worked fine. The refund amount is wrong though: I got {amount} back instead of {amount2}.",
        "I thought about cancelling because of the price, but could you just switch me from annual to monthly billing instead?",
        "My account was hacked last month and someone used my saved {card}. I've already secured my login, now I need the {amount} charge reversed.",
        "I can log in again now, thanks. But while I was locked out you charged my card {amount} for a renewal I don't understand. Can you explain the charge?",
    ],
    "shipping": [
        "Payment went through and I got the receipt, that's all fine. But order {order} still hasn't shipped after {n_days} days.",
        "I was going to cancel but I'd rather just know: when will order {order} actually arrive?",
        "Your app's tracking page shows nothing, but the {carrier} site says my package is held at the depot. How do I get it released?",
        "Not asking for a refund yet. I just need to know where the {product} is, tracking stopped updating on {date}.",
        "I logged into my account to check order {order} and it says delivered, but nothing arrived.",
        "I was charged for express shipping, fine, but the package is now {n_days} days late. Where is it?",
        "Please don't cancel my order, I just need the delivery address changed to {city} before it ships.",
    ],
    "account_access": [
        "I need to download my invoice for order {order} but I can't log in, the password reset email never shows up.",
        "I might cancel eventually but first I need to actually get into my account. Locked out since {date}.",
        "Not a billing question: I just can't sign in. It says my password is wrong even after resetting it.",
        "My package tracking link asks me to log in and my login doesn't work anymore. Please reset my access.",
        "The app itself works fine, it's my account: it says my email isn't verified and won't let me in.",
        "Someone logged into my account and changed the shipping address. Please lock it down and help me reset my password.",
        "I want to check whether my refund came through, but two-factor codes go to my old number so I can't get into my account.",
    ],
    "technical_issue": [
        "Not trying to cancel, but the app crashes every time I open the order history screen on my {device}.",
        "I can log in fine, but right after that the dashboard just shows {error}.",
        "Checkout throws {error} when I click pay. My card is fine and I wasn't charged, the page just breaks.",
        "The tracking info is probably fine, but the tracking page on your site won't load in {browser} at all.",
        "My password is correct and I'm signed in, yet the app shows a blank white screen since the update.",
        "My subscription is active and paid, but the {feature} has been broken since the update to {version}.",
        "I don't want a refund, I just want the {feature} to work again. It's been throwing {error} for {n_days} days.",
    ],
    "cancellation": [
        "The app keeps crashing and honestly I'm done. Please cancel my subscription effective today.",
        "Shipping takes forever, so I'd rather not wait: please cancel order {order} entirely.",
        "I couldn't log in for a week and now I just want out. Cancel my {plan} and close the account.",
        "You charged me again for the {plan}. I'm not asking about the invoice, I want the subscription cancelled for good.",
        "The {product} hasn't shipped yet, right? Then cancel order {order}, I don't need it anymore.",
        "Your billing page is confusing, I just want to stop the subscription. Where do I cancel?",
        "Tracking says it's out for delivery but I'd like to cancel order {order} anyway and refuse the package.",
    ],
}

EXTRAS: dict[str, list[str]] = {
    "billing": [
        "The charge is dated {date}.", "My account email is {email}.", "The card ends in {last4}.",
        "I need this sorted before our books close this month.", "I have the bank statement if you need it.",
    ],
    "shipping": [
        "I ordered it on {date}.", "The tracking number is {tracking}.", "My address in the account is correct.",
        "It was meant to be a gift.", "The {carrier} hotline wasn't helpful at all.",
    ],
    "account_access": [
        "My username is {username}.", "I've tried both the app and the website.",
        "I already cleared my cookies.", "The account email is {email}.", "I have past orders in there I need to see.",
    ],
    "technical_issue": [
        "I'm on a {device} using {browser}.", "App version {version}.", "I already tried reinstalling.",
        "I can send screenshots if needed.", "It started after the update on {date}.",
    ],
    "cancellation": [
        "My account email is {email}.", "I've been a customer for {years} years but it's time.",
        "Please confirm by email.", "No need to call me.", "The order was placed on {date}.",
    ],
}
GENERIC_EXTRAS = [
    "This is my second message about this.", "I've been a customer for {years} years.",
    "Sorry if this is the wrong place to ask.", "I tried the help center first.",
    # label-neutral sentences that borrow other labels' vocabulary
    "I mostly use the app on my {device}.", "I've placed a lot of orders with you over the years.",
    "My account email is {email}.", "The order number is {order}, if that helps.",
    "I'm on the {plan}.", "I couldn't find anything in the FAQ.",
]

OPENERS = {
    "polite": ["", "", "Hi,", "Hello,", "Hi there,", "Hello support team,", "Good morning,",
               "Good afternoon,", "Dear support,", "Hi team,", "Hey there,", "Hello, hope you're well."],
    "angry": ["", "", "Seriously?", "This is ridiculous.", "Unbelievable.", "Hello??",
              "I'm really frustrated.", "Third time writing about this.", "Not happy."],
    "terse": ["", "", "", "", "hi", "hey", "Hi"],
}
CLOSERS = {
    "polite": ["", "", "Thanks!", "Thank you.", "Thanks in advance.", "Appreciate your help.",
               "Any help would be appreciated.", "Thanks, {name}", "Kind regards, {name}", "Cheers",
               "Much appreciated!"],
    "angry": ["", "Fix this.", "I expect a reply today.", "Very disappointed.", "Not acceptable.",
              "Sort it out please.", "This is the last time I'm asking.", "Absolutely useless."],
    "terse": ["", "", "", "thx", "pls advise", "asap", "ty"],
}
TONES = ["polite", "angry", "terse"]
TONE_WEIGHTS = [0.55, 0.25, 0.20]
TONE_CODES = {"A": "angry", "P": "polite", "T": "terse"}

MISSPELLINGS = {
    "received": "recieved", "receive": "recieve", "password": "pasword", "account": "acount",
    "subscription": "subscripton", "cancel": "cancle", "address": "adress", "because": "becuase",
    "charged": "chargd", "tracking": "trackign", "please": "plese", "delivery": "delivary",
    "invoice": "invoce", "separate": "seperate", "refund": "refudn", "which": "wich",
    "their": "thier", "until": "untill", "order": "oder", "already": "allready",
    "immediately": "immediatly", "working": "workign",
}


def _split_tone(template: str) -> tuple[str | None, str]:
    if len(template) > 2 and template[1] == "|" and template[0] in TONE_CODES:
        return TONE_CODES[template[0]], template[2:]
    return None, template


class Renderer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.filler = Filler(rng)

    def render(self, label: str, template: str, month: int) -> str:
        r = self.rng
        fixed_tone, body = _split_tone(template)
        tone = fixed_tone or r.choices(TONES, TONE_WEIGHTS)[0]
        main = self.filler.fill(body, month)
        if tone == "angry" and main.endswith(".") and r.random() < 0.3:
            main = main[:-1] + r.choice(["!", "!!", "!!!"])
        extra_pre = extra_post = ""
        roll = r.random()
        if roll < 0.30:
            extra = self.filler.fill(r.choice(EXTRAS[label]), month)
        elif roll < 0.45:
            extra = self.filler.fill(r.choice(GENERIC_EXTRAS), month)
        else:
            extra = ""
        if extra:
            if r.random() < 0.3:
                extra_pre = extra
            else:
                extra_post = extra
        if extra_post and main[-1] not in ".!?":
            main += "."  # terse templates have no final full stop
        opener = r.choice(OPENERS[tone])
        closer = self.filler.fill(r.choice(CLOSERS[tone]), month)
        parts = [opener, extra_pre, main, extra_post, closer]
        text = " ".join(p for p in parts if p)
        if tone == "terse":
            if r.random() < 0.5:
                text = text.lower()
            text = text.rstrip(".")
        return " ".join(text.split())

    def typo(self, text: str) -> str:
        r = self.rng
        tokens = text.split(" ")
        known = [i for i, t in enumerate(tokens) if t.strip(".,!?\"'").lower() in MISSPELLINGS]
        if known and r.random() < 0.7:
            i = r.choice(known)
            core = tokens[i].strip(".,!?\"'")
            wrong = MISSPELLINGS[core.lower()]
            if core[0].isupper():
                wrong = wrong[0].upper() + wrong[1:]
            tokens[i] = tokens[i].replace(core, wrong, 1)
            return " ".join(tokens)
        candidates = [i for i, t in enumerate(tokens) if t.isalpha() and len(t) >= 5]
        if not candidates:
            return text
        i = r.choice(candidates)
        w = tokens[i]
        j = r.randint(1, len(w) - 2)
        op = r.randrange(3)
        if op == 0:  # swap two neighbouring letters
            w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        elif op == 1:  # drop a letter
            w = w[:j] + w[j + 1:]
        else:  # double a letter
            w = w[:j] + w[j] + w[j:]
        tokens[i] = w
        return " ".join(tokens)


def _norm_key(text: str) -> str:
    return " ".join(text.split()).lower()


def make_text(renderer: Renderer, label: str, template: str, month: int, seen: set[str]) -> str:
    """Render a unique, 6-45 word text from one template (retrying slots)."""
    for _ in range(200):
        text = renderer.render(label, template, month)
        if renderer.rng.random() < TYPO_RATE:
            text = renderer.typo(text)
        n_words = len(text.split())
        key = _norm_key(text)
        if MIN_WORDS <= n_words <= MAX_WORDS and key not in seen:
            seen.add(key)
            return text
    raise RuntimeError(f"could not render a unique text for template {template!r}")


def long_log_text(rng: random.Random) -> str:
    """A single-line ticket with a pasted console log (> 2,500 characters)."""
    frames = [
        "at CheckoutForm.render (main.8f3a2c.js:1:48213)",
        "at renderWithHooks (vendor.41be90.js:2:118842)",
        "at updateFunctionComponent (vendor.41be90.js:2:121907)",
        "at beginWork (vendor.41be90.js:2:139553)",
        "at performUnitOfWork (vendor.41be90.js:2:176310)",
    ]
    parts = [
        "The app crashes at checkout every single time, here is the log I copied from the "
        "browser console (Chrome 130, Windows 11):"
    ]
    ts_min, ts_sec = 12, 3
    i = 0
    while sum(len(p) + 1 for p in parts) < 2700:
        ts_sec += rng.randint(1, 9)
        if ts_sec >= 60:
            ts_sec -= 60
            ts_min += 1
        ms = rng.randint(0, 999)
        stamp = f"2026-11-14T09:{ts_min:02d}:{ts_sec:02d}.{ms:03d}Z"
        kind = i % 4
        if kind == 0:
            parts.append(
                f"{stamp} ERROR [checkout] PaymentSheet render failed: TypeError: Cannot read "
                f"properties of undefined (reading 'amount') {' '.join(frames)}"
            )
        elif kind == 1:
            req = rng.randint(100000, 999999)
            parts.append(
                f'{stamp} WARN [api] POST /v2/cart/{req}/confirm -> 500 '
                f'{{"status":500,"error":"Internal Server Error","requestId":"req_{req}"}}'
            )
        elif kind == 2:
            parts.append(f"{stamp} INFO [retry] attempt {i // 4 + 1} of 5, backing off 2000ms")
        else:
            parts.append(
                f"{stamp} ERROR [sentry] event dropped, rate limited (429), "
                f"session={rng.randint(10**7, 10**8 - 1)}"
            )
        i += 1
    parts.append("... and it repeats like that. Please help, I have been trying since the 12th.")
    text = " ".join(parts)
    assert "\n" not in text and len(text) > 2500
    return text


NEAR_DUP_STYLES = ["double_space", "tab", "nbsp", "pad", "spaces_many", "nbsp_double"]


def near_duplicate(text: str, style: str, rng: random.Random) -> str:
    """Same text, different whitespace only (collapses back to ``text``)."""
    tokens = text.split(" ")
    gaps = list(range(1, len(tokens)))

    def join_with(seps: dict[int, str]) -> str:
        out = tokens[0]
        for k in range(1, len(tokens)):
            out += seps.get(k, " ") + tokens[k]
        return out

    if style == "double_space":
        result = join_with({rng.choice(gaps): "  "})
    elif style == "tab":
        result = join_with({rng.choice(gaps): "\t"})
    elif style == "nbsp":
        result = join_with({rng.choice(gaps): "\u00a0"})
    elif style == "pad":
        result = " " + text + "   "
    elif style == "spaces_many":
        a, b = rng.sample(gaps, 2)
        result = join_with({a: "   ", b: "  "}) + " "
    else:  # nbsp_double
        a, b = rng.sample(gaps, 2)
        result = join_with({a: "\u00a0", b: "  "})
    assert result != text and " ".join(result.split()) == text
    return result


def build() -> dict[int, list[dict]]:
    rng = random.Random(SEED)
    renderer = Renderer(rng)
    seen: set[str] = set()

    # 1. Clean rows, per month, per label.  Every template is used; the
    # template order is cycled over the whole label then split by month.
    files: dict[int, list[dict]] = {m: [] for m in MONTHS}
    for label in LABELS:
        templates = TEMPLATES[label]
        n_regular = (CLEAN_PER_LABEL_PER_FILE - HARD_PER_LABEL_PER_FILE) * len(MONTHS)
        regular = [templates[k % len(templates)] for k in range(n_regular)]
        rng.shuffle(regular)
        hard_templates = HARD_TEMPLATES[label]
        n_hard = HARD_PER_LABEL_PER_FILE * len(MONTHS)
        hard = [hard_templates[k % len(hard_templates)] for k in range(n_hard)]
        rng.shuffle(hard)
        per_month_regular = n_regular // len(MONTHS)
        for mi, month in enumerate(MONTHS):
            chunk = [(t, False) for t in regular[mi * per_month_regular:(mi + 1) * per_month_regular]]
            chunk += [(t, True) for t in hard[mi * HARD_PER_LABEL_PER_FILE:(mi + 1) * HARD_PER_LABEL_PER_FILE]]
            for template, is_hard in chunk:
                text = make_text(renderer, label, template, month, seen)
                files[month].append({"label": label, "text": text, "kind": "hard" if is_hard else "clean"})
    for month in MONTHS:
        rng.shuffle(files[month])

    # 2. Messy rows, inserted one at a time at random positions.
    used_sources: list[int] = []  # id() of rows already used as a source

    def pick_source(rows: list[dict], upto: int) -> dict:
        while True:
            row = rows[rng.randrange(upto)]
            if row["kind"] in ("clean", "hard") and id(row) not in used_sources:
                used_sources.append(id(row))
                return row

    def insert(month: int, row: dict, min_pos: int = 50) -> int:
        rows = files[month]
        pos = rng.randint(min_pos, len(rows))
        rows.insert(pos, row)
        return pos

    def insert_copy(month: int, kind: str, source_month: int, style: str | None = None) -> None:
        rows = files[month]
        pos = rng.randint(150, len(rows))
        if source_month == month:
            src = pick_source(rows, pos)
        else:
            src = pick_source(files[source_month], len(files[source_month]))
        text = src["text"] if style is None else near_duplicate(src["text"], style, rng)
        rows.insert(pos, {"label": src["label"], "text": text, "kind": kind})

    # 8 exact duplicates: 4 per file, two of November's copy October rows.
    for month, source_month in [(10, 10), (10, 10), (10, 10), (10, 10),
                                (11, 11), (11, 11), (11, 10), (11, 10)]:
        insert_copy(month, "exact_duplicate", source_month)
    # 6 whitespace-only near-duplicates: 3 per file, one cross-file.
    for (month, source_month), style in zip(
        [(10, 10), (10, 10), (10, 10), (11, 11), (11, 11), (11, 10)], NEAR_DUP_STYLES
    ):
        insert_copy(month, "near_duplicate", source_month, style)
    # 4 empty / whitespace-only texts.
    for month, label, text in [(10, "shipping", ""), (10, "billing", "   "),
                               (11, "technical_issue", "\t"), (11, "account_access", " \u00a0 ")]:
        insert(month, {"label": label, "text": text, "kind": "empty_text"})
    # 3 label typos (the text itself is a normal ticket of the intended label).
    for month, true_label, bad_label in [(10, "billing", "biling"), (10, "shipping", "shiping"),
                                         (11, "cancellation", "cancelation")]:
        template = rng.choice(TEMPLATES[true_label])
        text = make_text(renderer, true_label, template, month, seen)
        insert(month, {"label": bad_label, "text": text, "kind": "label_typo"})
    # 2 empty labels.
    for month, true_label in [(10, "technical_issue"), (11, "cancellation")]:
        template = rng.choice(TEMPLATES[true_label])
        text = make_text(renderer, true_label, template, month, seen)
        insert(month, {"label": "", "text": text, "kind": "empty_label"})
    # 1 over-long pasted log.
    insert(11, {"label": "technical_issue", "text": long_log_text(rng), "kind": "long_text"})

    # 3. Ticket ids.
    for month in MONTHS:
        for k, row in enumerate(files[month], start=1):
            row["ticket_id"] = f"T-2026-{month:02d}-{k:05d}"
    return files


def check(files: dict[int, list[dict]]) -> None:
    rows = [r for m in MONTHS for r in files[m]]
    ids = [r["ticket_id"] for r in rows]
    assert len(ids) == len(set(ids)), "ticket_id must be unique"
    for r in rows:
        assert "\n" not in r["text"] and "\r" not in r["text"]
        if r["kind"] in ("clean", "hard", "label_typo", "empty_label"):
            assert MIN_WORDS <= len(r["text"].split()) <= MAX_WORDS, r
    valid = [r for r in rows if r["kind"] in ("clean", "hard")]
    per_label = Counter(r["label"] for r in valid)
    assert all(per_label[lab] >= 320 for lab in LABELS), per_label
    keys = Counter(_norm_key(r["text"]) for r in valid)
    assert max(keys.values()) == 1, "clean texts must be unique"


def write(files: dict[int, list[dict]]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for month in MONTHS:
        path = OUT_DIR / f"tickets_2026_{month:02d}.csv"
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(FIELDS)
            for row in files[month]:
                writer.writerow([row[f] for f in FIELDS])


def report(files: dict[int, list[dict]]) -> None:
    all_rows = [r for m in MONTHS for r in files[m]]
    for month in MONTHS:
        print(f"tickets_2026_{month:02d}.csv: {len(files[month])} rows")
    print(f"total: {len(all_rows)} rows")
    print("rows per label value (all rows, as written):")
    counts = Counter(r["label"] for r in all_rows)
    order = LABELS + sorted(k for k in counts if k not in LABELS)
    for label in order:
        per_file = ", ".join(
            f"{month}: {sum(1 for r in files[month] if r['label'] == label)}" for month in MONTHS
        )
        print(f"  {label or '<empty>':<16} {counts[label]:>5}  ({per_file})")
    print("row kinds:")
    kinds = Counter(r["kind"] for r in all_rows)
    for kind in ["clean", "hard", "exact_duplicate", "near_duplicate", "empty_text",
                 "label_typo", "empty_label", "long_text"]:
        per_file = ", ".join(
            f"{month}: {sum(1 for r in files[month] if r['kind'] == kind)}" for month in MONTHS
        )
        print(f"  {kind:<16} {kinds[kind]:>5}  ({per_file})")


def main() -> None:
    files = build()
    check(files)
    write(files)
    report(files)


if __name__ == "__main__":
    main()
