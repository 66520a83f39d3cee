"""FastAPI dependencies shared by the service's routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from serving.state import ServingState


def get_state(request: Request) -> ServingState:
    """The state current when the request started; a reload does not change it mid-request."""
    state = request.app.state.holder.current
    if state is None:
        raise HTTPException(503, "not ready")
    return state


State = Annotated[ServingState, Depends(get_state)]
