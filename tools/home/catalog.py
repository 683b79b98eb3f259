"""The home domain's catalogs: music, playlists, rooms and devices, cities.

Small data shipped with the code. Every entry is marked ``holdout=True`` or not: held-out
entries never appear in train or dev tasks, only in the test split's ``novel`` slice, which
shows what the teacher's lookup tools buy over what a student memorised.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# (artist, [songs]) -- the last four artists are held out.
_MUSIC: list[tuple[str, list[str]]] = [
    ("Queen", ["Bohemian Rhapsody", "Under Pressure", "Somebody to Love"]),
    ("The Beatles", ["Hey Jude", "Let It Be", "Yesterday"]),
    ("Adele", ["Rolling in the Deep", "Someone Like You", "Hello"]),
    ("Daft Punk", ["Get Lucky", "One More Time", "Digital Love"]),
    ("Taylor Swift", ["Shake It Off", "Blank Space", "Love Story"]),
    ("Miles Davis", ["So What", "Blue in Green", "Freddie Freeloader"]),
    ("Nina Simone", ["Feeling Good", "Sinnerman", "My Baby Just Cares for Me"]),
    ("Radiohead", ["Karma Police", "Creep", "No Surprises"]),
    ("Fleetwood Mac", ["Dreams", "Go Your Own Way", "Landslide"]),
    ("Stevie Wonder", ["Superstition", "Sir Duke", "Isn't She Lovely"]),
    ("Billie Eilish", ["Bad Guy", "Ocean Eyes", "Happier Than Ever"]),
    ("Bob Marley", ["Three Little Birds", "Redemption Song", "Is This Love"]),
    ("Coldplay", ["Yellow", "Viva la Vida", "Fix You"]),
    ("Aretha Franklin", ["Respect", "Think", "Chain of Fools"]),
    ("Kendrick Lamar", ["Humble", "Alright", "Money Trees"]),
    ("Norah Jones", ["Come Away with Me", "Don't Know Why", "Sunrise"]),
    ("The Cure", ["Lovesong", "Just Like Heaven", "Friday I'm in Love"]),
    ("Dua Lipa", ["Levitating", "New Rules", "Physical"]),
    ("Johnny Cash", ["Hurt", "Ring of Fire", "Folsom Prison Blues"]),
    ("Frank Ocean", ["Pink and White", "Thinkin Bout You", "Nights"]),
    # held out
    ("Portishead", ["Glory Box", "Roads", "Sour Times"]),
    ("Tame Impala", ["The Less I Know the Better", "Let It Happen", "Borderline"]),
    ("Etta James", ["At Last", "Something's Got a Hold on Me", "I'd Rather Go Blind"]),
    ("Massive Attack", ["Teardrop", "Unfinished Sympathy", "Angel"]),
]
_HELD_OUT_ARTISTS = {"Portishead", "Tame Impala", "Etta James", "Massive Attack"}

_PLAYLISTS = [
    "Chill Vibes", "Morning Run", "Dinner Party", "Deep Focus", "Road Trip", "Sunday Brunch",
    "Workout Mix", "Rainy Day", "Throwback Hits", "Late Night Jazz", "Sleep Sounds",
    "Summer Party",
    # held out
    "Cozy Cabin", "Study Beats", "Kitchen Disco", "Garden Party",
]
_HELD_OUT_PLAYLISTS = {"Cozy Cabin", "Study Beats", "Kitchen Disco", "Garden Party"}

# room slug -> (spoken aliases, device types present). Device ids read "<type>.<room>".
_ROOMS: dict[str, tuple[list[str], list[str]]] = {
    "living_room": (["living room", "lounge", "family room"], ["light", "tv", "fan", "blinds", "speaker"]),
    "kitchen": (["kitchen"], ["light", "speaker", "blinds"]),
    "bedroom": (["bedroom", "master bedroom"], ["light", "fan", "heater", "blinds"]),
    "office": (["office", "study"], ["light", "heater", "speaker"]),
    "bathroom": (["bathroom"], ["light", "heater", "fan"]),
    "hallway": (["hallway", "hall", "corridor"], ["light", "thermostat"]),
    "dining_room": (["dining room"], ["light", "blinds"]),
    "kids_room": (["kids room", "children's room", "nursery"], ["light", "fan", "heater"]),
    # held out
    "garage": (["garage"], ["light", "heater"]),
    "basement": (["basement", "cellar"], ["light", "fan"]),
    "guest_room": (["guest room", "spare room"], ["light", "heater", "blinds"]),
}
_HELD_OUT_ROOMS = {"garage", "basement", "guest_room"}

# device type -> the words people use for it
DEVICE_WORDS: dict[str, list[str]] = {
    "light": ["light", "lights", "lamp"],
    "tv": ["tv", "television", "telly"],
    "fan": ["fan", "ceiling fan"],
    "blinds": ["blinds", "shades", "curtains"],
    "speaker": ["speaker", "sound system"],
    "heater": ["heater", "radiator"],
    "thermostat": ["thermostat", "heating"],
}
# what "set" means for each type: (value unit spoken, low, high)
SETTABLE: dict[str, tuple[str, int, int]] = {
    "light": ("percent", 10, 100),
    "blinds": ("percent", 0, 100),
    "speaker": ("percent", 5, 100),
    "thermostat": ("degrees", 16, 26),
    "heater": ("degrees", 16, 26),
}

# canonical city -> aliases people say
_CITIES: dict[str, list[str]] = {
    "New York": ["new york", "nyc", "new york city"],
    "San Francisco": ["san francisco", "sf"],
    "Los Angeles": ["los angeles", "la"],
    "London": ["london"],
    "Paris": ["paris"],
    "Berlin": ["berlin"],
    "Tokyo": ["tokyo"],
    "Sydney": ["sydney"],
    "Chicago": ["chicago"],
    "Toronto": ["toronto"],
    "Madrid": ["madrid"],
    "Rome": ["rome"],
    "Amsterdam": ["amsterdam"],
    "Seattle": ["seattle"],
    "Boston": ["boston"],
    "Mumbai": ["mumbai", "bombay"],
    "Mexico City": ["mexico city"],
    "Buenos Aires": ["buenos aires"],
    "Cape Town": ["cape town"],
    "Dublin": ["dublin"],
    # held out
    "Lisbon": ["lisbon"],
    "Vancouver": ["vancouver"],
    "Edinburgh": ["edinburgh"],
    "Nairobi": ["nairobi"],
    "Reykjavik": ["reykjavik"],
}
_HELD_OUT_CITIES = {"Lisbon", "Vancouver", "Edinburgh", "Nairobi", "Reykjavik"}


@dataclass(frozen=True)
class Song:
    title: str
    artist: str
    holdout: bool


@dataclass(frozen=True)
class Device:
    device_id: str
    room: str
    device_type: str
    holdout: bool


@dataclass(frozen=True)
class Catalog:
    songs: list[Song] = field(default_factory=list)
    artists: dict[str, bool] = field(default_factory=dict)  # name -> holdout
    playlists: dict[str, bool] = field(default_factory=dict)
    rooms: dict[str, tuple[list[str], bool]] = field(default_factory=dict)  # slug -> (aliases, holdout)
    devices: list[Device] = field(default_factory=list)
    cities: dict[str, tuple[list[str], bool]] = field(default_factory=dict)


def load_catalog() -> Catalog:
    songs = [
        Song(title, artist, artist in _HELD_OUT_ARTISTS) for artist, titles in _MUSIC for title in titles
    ]
    return Catalog(
        songs=songs,
        artists={artist: artist in _HELD_OUT_ARTISTS for artist, _ in _MUSIC},
        playlists={name: name in _HELD_OUT_PLAYLISTS for name in _PLAYLISTS},
        rooms={slug: (aliases, slug in _HELD_OUT_ROOMS) for slug, (aliases, _) in _ROOMS.items()},
        devices=[
            Device(f"{kind}.{slug}", slug, kind, slug in _HELD_OUT_ROOMS)
            for slug, (_, kinds) in _ROOMS.items()
            for kind in kinds
        ],
        cities={name: (aliases, name in _HELD_OUT_CITIES) for name, aliases in _CITIES.items()},
    )


CATALOG = load_catalog()
