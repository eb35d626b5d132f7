"""The one inference path every prediction route takes:

    pick -> admit -> read -> prepare -> batch -> respond

  pick:    the registry entry for (task, model query) -- 422/503 before reading a big body
  admit:   a slot on that model's batcher (app/batching.py) -- 503 + Retry-After when full
  read:    the upload(s) from the body, within the size limit (app/uploads.py)
  prepare: decode + the task's prepare function from the catalog, reading the manifest's
           input contract (models/preprocess.py), in a worker thread
  batch:   the route's batch function, on a micro-batch, in the model's own thread
  respond: the router turns the result into its response model

Routers stay thin: each declares its task, upload fields and batch function and calls `serve`.
Shared objects reach handlers through FastAPI dependencies (`Services`), never `app.state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable

from fastapi import Depends, Request

from app.batching import BatchFn, BatchingPool
from app.errors import ApiError
from app.imaging import decode_image
from app.registry import LoadedModel, ModelRegistry
from app.settings import Settings
from app.uploads import read_images
from models.preprocess import NoDigitError

SINGLE_UPLOAD = {"file": "image"}  # multipart field -> JSON key


@dataclass
class Services:
    """What one running app shares with its handlers (made in the lifespan)."""
    settings: Settings
    registry: ModelRegistry
    batching: BatchingPool


async def services_if_loaded(request: Request) -> Services | None:
    """The app's services, or None until the lifespan has loaded the models. (async: FastAPI
    would run a plain def dependency in its threadpool, a thread hop per request.)"""
    return getattr(request.app.state, "services", None)


async def get_services(request: Request) -> Services:
    services = await services_if_loaded(request)
    if services is None:  # only between process start and the end of model loading
        raise ApiError(503, "model_unavailable", "the server is still loading its models",
                       headers={"Retry-After": "5"})
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def prepare_image(entry: LoadedModel, image) -> Any:
    """A decoded upload -> the network input, by the task's prepare function and the manifest's
    input contract; a 4xx when there is nothing to read."""
    try:
        return entry.spec.prepare(image, entry.manifest.input)
    except NoDigitError as exc:
        raise ApiError(422, "no_digit", f"{exc}; draw a digit in a colour that differs from the background") from None


def prepare_upload(entry: LoadedModel, data: bytes, max_pixels: int) -> Any:
    """Upload bytes -> the network input (decode, then `prepare_image`); a 4xx when unusable."""
    return prepare_image(entry, decode_image(data, max_pixels))


def _prepare_all(entry: LoadedModel, files: dict[str, bytes], max_pixels: int
                 ) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """Every upload field -> (its network input, its decoded (width, height))."""
    inputs, sizes = {}, {}
    for name, data in files.items():
        image = decode_image(data, max_pixels)
        inputs[name], sizes[name] = prepare_image(entry, image), image.size
    return inputs, sizes


@dataclass
class Served:
    entry: LoadedModel  # the model that answered
    inputs: dict[str, Any]  # per upload field: what its prepare function returned
    result: Any  # this request's share of the batch function's results
    sizes: dict[str, tuple[int, int]]  # per upload field: the decoded image's (width, height)


async def serve(services: Services, request: Request, *, task: str, model: str | None, batch: BatchFn,
                fields: dict[str, str] = SINGLE_UPLOAD, target: Callable[[LoadedModel], Any] | None = None,
                item: Callable[[dict[str, Any]], Any] | None = None) -> Served:
    """Run one request through the inference path.

    `batch(target, items)` runs in the model's thread on the items of several requests;
    `target(entry)` is what it gets (default: the entry itself); `item(inputs)` turns this
    request's prepared uploads into its batch item (default: the single upload's input)."""
    settings = services.settings
    entry = services.registry.pick(task, model)
    batcher = services.batching.for_model(entry.name, target(entry) if target else entry, batch)
    async with batcher.admit() as slot:
        files = await read_images(request, settings.max_upload_bytes, fields, settings.upload_timeout_s)
        inputs, sizes = await services.batching.preprocess(_prepare_all, entry, files, settings.max_image_pixels)
        result = await slot.infer(item(inputs) if item else next(iter(inputs.values())))
    return Served(entry, inputs, result, sizes)
