"""The moderation endpoint (method A removed offensive sources and outputs): flagged or not, and which categories."""

from __future__ import annotations

from collections.abc import Iterator


def moderate(client, texts: list[str], model: str, batch_size: int = 32) -> Iterator[tuple[bool, list[str]]]:
    """(flagged, flagged category names) per text, in order; one request per `batch_size` texts."""
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        resp = client.moderations.create(model=model, input=chunk)
        if len(resp.results) != len(chunk):
            raise ValueError(f"moderation returned {len(resp.results)} results for {len(chunk)} inputs")
        for r in resp.results:
            cats = r.categories.model_dump(by_alias=True) if hasattr(r.categories, "model_dump") else dict(r.categories)
            yield bool(r.flagged), sorted(k for k, v in cats.items() if v)
