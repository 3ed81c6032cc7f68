"""`python -m geomsim.sweep.worker OUT INDEX SECONDS`: one chunk of the sweep in OUT, in a fresh process.

The sweep's second try at a chunk whose execution stalled (`geomsim.watchdog`): a new
process has its own XLA runtime.  The config and the chunk size come from OUT/meta.json,
which the sweep wrote before computing, and the chunk file is written atomically as in the
sweep itself, so a finished retry is indistinguishable from a first try.  Exit status 0
with the chunk written; 3 with one line on stderr if it stalled here too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from geomsim._runtime import enable_compilation_cache
from geomsim.sweep.config import make_config
from geomsim.watchdog import Stalled, finish, set_limit


def main(argv: list[str]) -> int:
    out_dir, index, seconds = Path(argv[0]), int(argv[1]), float(argv[2])
    enable_compilation_cache()
    set_limit(seconds)
    meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    config = make_config(overrides=meta["config"])
    if config.digest() != meta["config_digest"]:
        print(f"config: {out_dir}/meta.json does not rebuild its own config", file=sys.stderr)
        return 2
    from geomsim.sweep.run import WORKER_STALLED, Chunks, chunk_path, precision, save_chunk

    try:
        with precision(config.float64):
            out = Chunks(config, meta["chunk_rows"]).compute(index, attempt=2)
    except Stalled as err:
        print(str(err), file=sys.stderr)
        return WORKER_STALLED
    save_chunk(chunk_path(out_dir, index), out)
    return 0


if __name__ == "__main__":
    sys.exit(finish(main(sys.argv[1:])))
