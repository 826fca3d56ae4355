"""A request body read within a size limit, for the HTTP endpoints that take documents (the
passerelle's declarations, ressources' simulations): refused as soon as it is known to exceed
it, never held beyond it."""

from collections.abc import AsyncIterator


class BodyTooLarge(Exception):
    """The body exceeds the limit: answer 413 with `message` (French)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


async def read_capped(chunks: AsyncIterator[bytes], content_length: str | None, cap: int) -> bytes:
    """The body, refused as soon as it is known to exceed `cap` bytes: from Content-Length
    before reading anything, else while reading, never holding more than `cap` bytes."""
    if content_length is not None and content_length.isdigit() and int(content_length) > cap:
        raise BodyTooLarge(f"corps de {int(content_length)} octets : au plus {cap} octets")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > cap:
            raise BodyTooLarge(f"corps de plus de {cap} octets : au plus {cap} octets")
    return bytes(body)
