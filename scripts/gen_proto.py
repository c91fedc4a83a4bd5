"""Regenerate fedloop.proto's Python code from proto/*.proto (run: `make proto`).

protoc is given the virtual include path `fedloop/proto=proto`, so the generated
gRPC module imports `fedloop.proto.feedback_pb2` rather than a bare top-level
`feedback_pb2`; the output is then copied into src/fedloop/proto/.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]


def generate(out_dir: Path) -> list[Path]:
    """Generate code for every .proto in src/fedloop/proto/ into `out_dir`; returns the written files."""
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for proto in sorted((ROOT / "src" / "fedloop" / "proto").glob("*.proto")):
            args = [
                "protoc",
                f"-Ifedloop/proto={ROOT / 'src' / 'fedloop' / 'proto'}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                f"fedloop/proto/{proto.name}",
            ]
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed on {proto}")
        for generated in sorted((Path(tmp) / "fedloop" / "proto").iterdir()):
            target = out_dir / generated.name
            shutil.copyfile(generated, target)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src" / "fedloop" / "proto"):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
