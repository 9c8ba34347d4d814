"""Path converters. ``<id:...>`` is Django's ``<int:...>`` bounded to a primary key's range: a longer number
matches no route (a 404 in the API's shape), since the database's integer cannot hold it."""

MAX_ID = 2 ** 63 - 1


class IdConverter:
    regex = "[0-9]{1,19}"

    def to_python(self, value):
        number = int(value)
        if number > MAX_ID:
            raise ValueError(value)  # no match
        return number

    def to_url(self, value):
        return str(value)
