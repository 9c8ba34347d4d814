"""Redis (shared by Channels, rate limits and token streams) and the channel layer."""

from gpu_runtime.redis_url import redis_url_from_env

from .env import VAR_DIR, env_list

REDIS_URL = redis_url_from_env(VAR_DIR)
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"REDIS_URL={REDIS_URL!r}: use redis://, rediss:// or unix:// .")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # Every consumer waits on BZPOPMIN for 5 s at a time; redis-py 8's default 5 s read timeout would race
        # it and kill idle sockets, so reads get longer than that.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}], "prefix": "vajra:asgi"},
    }
}

# Browser websockets (session cookie) must come from one of these origins; API-key clients are not
# ambient credentials, so they may connect from anywhere.
WEBSOCKET_ALLOWED_ORIGINS = env_list("VAJRA_WEBSOCKET_ALLOWED_ORIGINS", [])
