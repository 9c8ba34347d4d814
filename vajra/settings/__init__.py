"""VAJRA settings, one module per concern. Each reads its environment variables and fails loudly."""

from .base import *
from .billing import *
from .celery import *
from .channels import *
from .database import *
from .observability import *
from .runtime import *
from .security import *
