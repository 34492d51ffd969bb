"""Typed application state: the aiohttp ``web.AppKey``s under which the app keeps its parts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiohttp import web

from ..auth import KeyStore
from ..batching import Batcher
from ..config import ServerConfig
from ..files import FileService
from ..metrics import Metrics
from ..models.registry import ModelRegistry
from ..ratelimit import RateLimiter
from ..service import EditService
from ..service.admission import MemoryBudget
from ..storage import Store
from .fetch import ImageFetcher


@dataclass
class AppState:
    started: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False
    #: SIGTERM received: new edits get 503, /ready says not ready, the listener stays up
    draining: bool = False
    #: edit requests being answered now (the shutdown waits for them, up to the grace)
    in_flight: int = 0


CONFIG = web.AppKey("config", ServerConfig)
STATE = web.AppKey("state", AppState)
KEYS = web.AppKey("keys", KeyStore)
METRICS = web.AppKey("metrics", Metrics)
REGISTRY = web.AppKey("registry", ModelRegistry)
BATCHER = web.AppKey("batcher", Batcher)
STORE = web.AppKey("store", Store)
SERVICE = web.AppKey("service", EditService)
BUDGET = web.AppKey("budget", MemoryBudget)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
#: --rate-limit-per-user (the per-key limit lives in the auth middleware)
USER_LIMITER = web.AppKey("user_limiter", RateLimiter)
#: files (``/v1/files``): uploads, batch input and output files, ``file_id`` image references
FILES = web.AppKey("files", FileService)
#: the image URL fetcher (``fetch.py``); absent unless --image-url-allow names hosts
FETCHER = web.AppKey("fetcher", ImageFetcher)
