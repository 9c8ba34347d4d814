"""Content negotiation for views that answer bytes of their own (a PDF, a file's content)."""

from rest_framework.negotiation import BaseContentNegotiation


class JSONErrors(BaseContentNegotiation):
    """The view answers its bytes itself; anything it refuses is JSON in the one error shape, whatever the client's
    Accept header asked for (the OpenAI client asks for application/binary, a browser for application/pdf)."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
