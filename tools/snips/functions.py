"""The SNIPS intents as action functions: one per intent, one optional argument per slot.

Slot values are the words of the utterance, verbatim. A slot named twice in one utterance
("add *The Field* *album* to my *romantic evening* *album*") is a list of its values, in order.
Calling a function only confirms what was understood: SNIPS has no backend to act on.
"""
from __future__ import annotations

import json
from typing import Any

Slot = str | list[str] | None


def _understood(intent: str, slots: dict[str, Any]) -> str:
    return f"{intent} " + json.dumps({k: v for k, v in slots.items() if v is not None}, ensure_ascii=False)


def AddToPlaylist(music_item: Slot = None, playlist: Slot = None, artist: Slot = None, playlist_owner: Slot = None,
                  entity_name: Slot = None) -> str:
    """Add a song, album or artist to a playlist.

    Args:
        music_item: the kind of item, e.g. "song", "album", "track".
        playlist: the playlist's name, e.g. "Música Libre".
        artist: the artist to add, or whose item to add.
        playlist_owner: whose playlist, e.g. "my", "Lela's".
        entity_name: the name of the song or album to add.
    """
    return _understood("AddToPlaylist", locals())


def BookRestaurant(restaurant_name: Slot = None, restaurant_type: Slot = None, served_dish: Slot = None,
                   cuisine: Slot = None, party_size_number: Slot = None, party_size_description: Slot = None,
                   timeRange: Slot = None, city: Slot = None, state: Slot = None, country: Slot = None,
                   poi: Slot = None, spatial_relation: Slot = None, facility: Slot = None, sort: Slot = None) -> str:
    """Book a table at a restaurant.

    Args:
        restaurant_name: the restaurant's name.
        restaurant_type: e.g. "restaurant", "pub", "brasserie", "food truck".
        served_dish: a dish it should serve, e.g. "pizzas".
        cuisine: e.g. "tuscan", "vegetarian".
        party_size_number: how many people, as said: "8", "six".
        party_size_description: who is coming, e.g. "me and my son".
        timeRange: when, as said: "at noon", "tomorrow".
        city: the city.
        state: the state or region, e.g. "Indiana", "TN".
        country: the country.
        poi: a place it should be near, e.g. "Pelham Bay Park".
        spatial_relation: how near, e.g. "close", "within walking distance".
        facility: e.g. "parking", "wifi", "spa".
        sort: a ranking wish, e.g. "highly rated", "best".
    """
    return _understood("BookRestaurant", locals())


def GetWeather(timeRange: Slot = None, city: Slot = None, state: Slot = None, country: Slot = None,
               geographic_poi: Slot = None, current_location: Slot = None, spatial_relation: Slot = None,
               condition_description: Slot = None, condition_temperature: Slot = None) -> str:
    """Get the weather forecast.

    Args:
        timeRange: when, as said: "tomorrow", "in 9 years".
        city: the city.
        state: the state or region.
        country: the country.
        geographic_poi: a place such as a park or a mountain.
        current_location: the user's own location, as said: "here", "current".
        spatial_relation: e.g. "nearby", "around".
        condition_description: a kind of weather, e.g. "humid", "hail".
        condition_temperature: e.g. "chilly", "hot", "colder".
    """
    return _understood("GetWeather", locals())


def PlayMusic(music_item: Slot = None, track: Slot = None, album: Slot = None, artist: Slot = None,
              playlist: Slot = None, genre: Slot = None, year: Slot = None, service: Slot = None,
              sort: Slot = None) -> str:
    """Play music.

    Args:
        music_item: the kind of item, e.g. "song", "album", "tune".
        track: the song's title.
        album: the album's title.
        artist: the artist.
        playlist: a playlist's name.
        genre: e.g. "jazz", "pop".
        year: a year or decade, as said: "1983", "fourties".
        service: where to play it from, e.g. "Spotify", "YouTube".
        sort: e.g. "newest", "most popular".
    """
    return _understood("PlayMusic", locals())


def RateBook(object_name: Slot = None, object_type: Slot = None, object_select: Slot = None,
             object_part_of_series_type: Slot = None, rating_value: Slot = None, best_rating: Slot = None,
             rating_unit: Slot = None) -> str:
    """Rate a book or another work.

    Args:
        object_name: the work's title.
        object_type: e.g. "book", "novel", "textbook".
        object_select: which one, e.g. "this", "current".
        object_part_of_series_type: e.g. "series", "chronicle", "saga".
        rating_value: the rating given, as said: "4", "five".
        best_rating: the top of the scale, e.g. "6".
        rating_unit: e.g. "stars", "points".
    """
    return _understood("RateBook", locals())


def SearchCreativeWork(object_name: Slot = None, object_type: Slot = None) -> str:
    """Find a creative work: a book, film, song, TV show, game or painting.

    Args:
        object_name: the work's title.
        object_type: e.g. "movie", "song", "TV show", "game".
    """
    return _understood("SearchCreativeWork", locals())


def SearchScreeningEvent(movie_name: Slot = None, movie_type: Slot = None, object_type: Slot = None,
                         location_name: Slot = None, object_location_type: Slot = None, timeRange: Slot = None,
                         spatial_relation: Slot = None) -> str:
    """Find film screenings: showtimes, what is on, which cinema.

    Args:
        movie_name: the film's title.
        movie_type: e.g. "animated movies", "films".
        object_type: what is wanted, e.g. "movie schedules", "showtimes".
        location_name: a cinema's name, e.g. "Dipson Theatres".
        object_location_type: the kind of place, e.g. "movie theatre", "cinema".
        timeRange: when, as said: "tonight", "at 8 pm".
        spatial_relation: e.g. "nearest", "around here".
    """
    return _understood("SearchScreeningEvent", locals())


ACTION_FUNCTIONS = [AddToPlaylist, BookRestaurant, GetWeather, PlayMusic, RateBook, SearchCreativeWork,
                    SearchScreeningEvent]
