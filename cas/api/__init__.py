"""The node's local HTTP API (twisted.web, HTTP/1.1). Contract: docs/api.md.

Uploads stream: stock twisted.web spools a request body before rendering, so ``ApiRequest`` takes the body
as it arrives (``gotLength`` / ``handleContentChunk``, with the request line read from the channel's private
``_command``/``_path``) and feeds it to the store pipeline, pausing the socket while the pipeline is full.
Those private names are pinned by a canary test (``cas/test/test_api.py``) and the Twisted range in setup.cfg.
"""

from cas.api.common import DRAIN_LIMIT, IDLE_TIMEOUT, RETRY_AFTER, redact
from cas.api.request import ApiRequest, widen_sends
from cas.api.site import ApiSite, make_site

__all__ = ["ApiRequest", "ApiSite", "DRAIN_LIMIT", "IDLE_TIMEOUT", "RETRY_AFTER", "make_site", "redact", "widen_sends"]
