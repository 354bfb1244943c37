"""A dashboard form's fields, read as the ops' input models take them."""

from fastapi import Request

from app.dashboard.csrf import FIELD


async def fields(request: Request) -> dict[str, str]:
    """The form's text fields, stripped; empty ones left out (absent = not given); the CSRF
    token is not a field of any operation."""
    form = await request.form()
    values: dict[str, str] = {}
    for name, value in form.multi_items():
        if name == FIELD or not isinstance(value, str):
            continue
        if value.strip():
            values[name] = value.strip()
    return values


def ticked(values: dict[str, str], name: str) -> bool:
    """A checkbox: present when ticked."""
    return name in values
