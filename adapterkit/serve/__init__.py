"""``adapterkit serve``: an OpenAI-compatible server that batches requests for different adapters,
of every routable kind, into one forward (see docs/serving.md).

Modules: ``protocol`` (request and response shapes), ``requests`` (their checks), ``selection``
(which adapters a request runs), ``adapters`` (the adapter cache), ``scheduler``, ``engine``
(the model's thread), ``kvcache``, ``sampling``, ``text`` (detokenisation and stop strings),
``generate`` and ``encoders`` (the endpoints' handlers), ``app`` (FastAPI), ``metrics``
(Prometheus), ``server`` (putting it together).
"""

from .scheduler import SchedulerConfig
from .server import Options, ServerThread, create_state, serve

__all__ = ["Options", "SchedulerConfig", "ServerThread", "create_state", "serve"]
