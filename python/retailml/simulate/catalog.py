"""The static world of the simulated shop: categories, countries, channels, names, addresses.

Only constants (tuples) and small formatting helpers; the behaviour lives in the other modules.
Categorical state is kept as small integer codes indexing these tuples.
"""

from __future__ import annotations

import functools
import unicodedata

CURRENCY = "EUR"
SHIPPING_PRODUCT_ID = "SHIPPING"

# -- categories (code = position) ---------------------------------------------------------
CATEGORIES: tuple[str, ...] = (
    "electronics",
    "home",
    "garden",
    "toys",
    "fashion",
    "beauty",
    "sports",
    "books",
)
# share of product lines in an average week, before seasonality
CATEGORY_SHARE: tuple[float, ...] = (0.14, 0.16, 0.08, 0.09, 0.20, 0.12, 0.10, 0.11)
# median list price (EUR) of a product in the category
CATEGORY_MEDIAN_PRICE: tuple[float, ...] = (120.0, 45.0, 35.0, 25.0, 40.0, 18.0, 50.0, 15.0)
# quantity per line is 1 + Poisson(lambda)
CATEGORY_EXTRA_QUANTITY: tuple[float, ...] = (0.05, 0.2, 0.4, 0.2, 0.3, 0.5, 0.2, 0.3)
# probability that a purchased line is returned (scaled by the customer's price sensitivity)
CATEGORY_RETURN_PROB: tuple[float, ...] = (0.08, 0.06, 0.04, 0.05, 0.25, 0.03, 0.10, 0.02)
CATEGORY_MEDIAN_WEIGHT_G: tuple[float, ...] = (900, 1500, 2500, 600, 400, 200, 800, 450)
SIZED_CATEGORIES: frozenset[str] = frozenset({"fashion", "sports"})
SIZES: tuple[str, ...] = ("XS", "S", "M", "L", "XL")
COLORS: tuple[str, ...] = (
    "black",
    "white",
    "grey",
    "red",
    "blue",
    "green",
    "yellow",
    "pink",
    "brown",
    "beige",
)
PRODUCT_ADJECTIVES: tuple[str, ...] = (
    "Classic",
    "Compact",
    "Deluxe",
    "Eco",
    "Essential",
    "Nordic",
    "Pro",
    "Smart",
    "Urban",
    "Vintage",
    "Premium",
    "Basic",
)
PRODUCT_NOUNS: tuple[tuple[str, ...], ...] = (
    ("Headphones", "Charger", "Speaker", "Monitor", "Keyboard", "Mouse", "Webcam", "Tablet"),
    ("Lamp", "Cushion", "Vase", "Blanket", "Mirror", "Clock", "Shelf", "Rug"),
    ("Hose", "Planter", "Shears", "Parasol", "Lantern", "Rake", "Bench", "Seed Kit"),
    ("Puzzle", "Plush Bear", "Building Set", "Race Car", "Doll", "Board Game", "Kite", "Robot"),
    ("T-Shirt", "Jeans", "Sweater", "Jacket", "Dress", "Sneakers", "Scarf", "Hoodie"),
    ("Face Cream", "Shampoo", "Lipstick", "Perfume", "Serum", "Body Lotion", "Mascara", "Soap"),
    (
        "Yoga Mat",
        "Dumbbell",
        "Running Shorts",
        "Bike Light",
        "Water Bottle",
        "Racket",
        "Ball",
        "Cap",
    ),
    ("Novel", "Cookbook", "Atlas", "Biography", "Comic", "Travel Guide", "Poetry", "Thriller"),
)

# -- channels (code = position); signup channels are the first three -----------------------
CHANNELS: tuple[str, ...] = ("web", "app", "marketplace", "social")
SIGNUP_CHANNELS: tuple[str, ...] = CHANNELS
SIGNUP_CHANNEL_SHARE: tuple[float, ...] = (0.50, 0.35, 0.15, 0.0)  # 'social' only in the drift
# drift scenario: the campaign's sign-ups come mostly through social media
SIGNUP_CHANNEL_SHARE_DRIFT: tuple[float, ...] = (0.20, 0.14, 0.06, 0.60)
LOYALTY_TIERS: tuple[str, ...] = ("bronze", "silver", "gold")
# lifetime net spend (EUR) from which a customer holds the tier
LOYALTY_THRESHOLDS: tuple[float, ...] = (0.0, 250.0, 1000.0)

# -- countries (code = position); ES only appears in the drift scenario --------------------
COUNTRIES: tuple[str, ...] = ("NL", "DE", "BE", "FR", "ES")
COUNTRY_SHARE: tuple[float, ...] = (0.45, 0.28, 0.15, 0.12, 0.0)
COUNTRY_SHARE_DRIFT: tuple[float, ...] = (0.38, 0.24, 0.13, 0.10, 0.15)
SHIPPING_FEE: tuple[float, ...] = (4.95, 5.95, 5.95, 7.95, 8.95)
FREE_SHIPPING_FROM = 50.0
EMAIL_DOMAIN: tuple[str, ...] = (
    "example.nl",
    "example.de",
    "example.be",
    "example.fr",
    "example.es",
)

FIRST_NAMES: tuple[tuple[str, ...], ...] = (
    ("Daan", "Sem", "Lucas", "Emma", "Julia", "Mila", "Tess", "Noah", "Sophie", "Finn", "Anna"),
    ("Lukas", "Leon", "Jonas", "Mia", "Emma", "Hannah", "Sofia", "Paul", "Ben", "Lea", "Jürgen"),
    ("Louis", "Noah", "Olivia", "Louise", "Arthur", "Mila", "Jules", "Elise", "Lucas", "Emma"),
    ("Gabriel", "Léo", "Raphaël", "Louise", "Jade", "Emma", "Ambre", "Arthur", "Lina", "Hugo"),
    ("Hugo", "Martín", "Lucía", "Sofía", "Mateo", "Martina", "Leo", "Julia", "Daniel", "Paula"),
)
LAST_NAMES: tuple[tuple[str, ...], ...] = (
    ("de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Visser", "Smit"),
    ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker"),
    ("Peeters", "Janssens", "Maes", "Jacobs", "Mertens", "Willems", "Claes", "Dubois"),
    ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand"),
    ("García", "Rodríguez", "González", "Fernández", "López", "Martínez", "Sánchez", "Pérez"),
)
STREETS: tuple[tuple[str, ...], ...] = (
    ("Kerkstraat", "Dorpsstraat", "Schoolstraat", "Molenweg", "Stationsweg", "Hoofdstraat"),
    ("Hauptstraße", "Schulstraße", "Gartenstraße", "Bahnhofstraße", "Lindenstraße", "Birkenweg"),
    ("Kerkstraat", "Stationsstraat", "Rue de la Station", "Nieuwstraat", "Molenstraat"),
    (
        "Rue de la Paix",
        "Rue Victor Hugo",
        "Avenue Jean Jaurès",
        "Boulevard Pasteur",
        "Rue du Moulin",
    ),
    ("Calle Mayor", "Calle Real", "Avenida de la Constitución", "Calle del Sol", "Calle Nueva"),
)
# (city, first postcode number) per country
CITIES: tuple[tuple[tuple[str, int], ...], ...] = (
    (("Amsterdam", 1011), ("Rotterdam", 3011), ("Den Haag", 2511), ("Utrecht", 3511),
     ("Eindhoven", 5611), ("Groningen", 9711), ("Breda", 4811), ("Nijmegen", 6511)),
    (("Berlin", 10115), ("Hamburg", 20095), ("München", 80331), ("Köln", 50667),
     ("Frankfurt am Main", 60311), ("Leipzig", 4103), ("Dresden", 1067)),
    (("Brussel", 1000), ("Antwerpen", 2000), ("Gent", 9000), ("Brugge", 8000),
     ("Leuven", 3000), ("Liège", 4000)),
    (("Paris", 75001), ("Lyon", 69001), ("Marseille", 13001), ("Toulouse", 31000),
     ("Nice", 6000), ("Nantes", 44000), ("Lille", 59000), ("Bordeaux", 33000)),
    (("Madrid", 28001), ("Barcelona", 8001), ("Valencia", 46001), ("Sevilla", 41001),
     ("Málaga", 29001), ("Bilbao", 48001)),
)  # fmt: skip
POSTCODE_SPREAD = 60  # postcodes of a city: first number + 0..59
POSTCODE_LETTERS = 26 * 26  # NL postcodes end in two letters


def format_postcode(country: int, city: int, code: int) -> str:
    """Postcode text in the country's format; ``code`` is 0..POSTCODE_SPREAD*676-1."""
    number = CITIES[country][city][1] + code // POSTCODE_LETTERS % POSTCODE_SPREAD
    if COUNTRIES[country] == "NL":
        letters = code % POSTCODE_LETTERS
        return f"{number:04d} {chr(65 + letters // 26)}{chr(65 + letters % 26)}"
    if COUNTRIES[country] == "BE":
        return f"{number:04d}"
    return f"{number:05d}"


def format_street(country: int, street: int, house_number: int) -> str:
    """Street line; French addresses put the number first."""
    name = STREETS[country][street]
    return f"{house_number} {name}" if COUNTRIES[country] == "FR" else f"{name} {house_number}"


def email_address(first: str, last: str, number: int, country: int) -> str:
    """A unique, ASCII e-mail address."""
    local = f"{_ascii_slug(first)}.{_ascii_slug(last)}{number}"
    return f"{local}@{EMAIL_DOMAIN[country]}"


@functools.cache
def _ascii_slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in ascii_text.lower() if ch.isalnum())


def customer_id(index: int) -> str:
    return f"C{index + 1:07d}"


def product_id(index: int) -> str:
    return f"P{index + 1:05d}"
