"""VAJRA settings, one module per concern. Each reads its environment variables and fails loudly."""

from .base import *
from .database import *
from .security import *
from .channels import *
from .celery import *
from .runtime import *
from .billing import *
