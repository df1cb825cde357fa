"""Compare model variants (dense vs pruned / 2:4) on a running KServe v2 server.

Split so each part can be tested alone: `options` (settings and parsing),
`client` (metadata, inputs, compatibility), `load` (bounded asyncio load),
`agreement` (pure numpy), `scrape` (Prometheus counters), `report` (JSON and
terminal table), `plots` and `htmlreport` (PNG and self-contained HTML),
`runner` (the orchestration).
"""

from runtime.compare.errors import CompareError
from runtime.compare.options import CompareSettings

__all__ = ["CompareError", "CompareSettings"]
