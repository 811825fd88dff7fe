"""Engines that run a hosted model through its task API with the operator's own key.

`base.UpstreamEngine` is the create-poll-download template; `ark` and `evolink` fill in their
wire formats. Route factories: `opendance.engines.upstream.ark:from_options` and
`opendance.engines.upstream.evolink:from_options` (docs/upstreams.md).
"""

from opendance.engines.upstream.base import UpstreamEngine
from opendance.engines.upstream.options import UpstreamOptions
from opendance.engines.upstream.wire import MalformedAnswer, TaskSnapshot

__all__ = ["MalformedAnswer", "TaskSnapshot", "UpstreamEngine", "UpstreamOptions"]
