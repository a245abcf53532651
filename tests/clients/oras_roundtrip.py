"""Push a file as an OCI artifact and pull it back, using the oras client
from PyPI.

usage: oras_roundtrip.py HOST REPO TAG FILE OUTDIR [CHUNK_BYTES]
With CHUNK_BYTES, the push sends the file as a chunked upload (one PATCH
per CHUNK_BYTES). Prints the paths of the pulled files, one per line.
"""
import os
import sys

import oras.client

host, repo, tag, path, outdir = sys.argv[1:6]
chunk = int(sys.argv[6]) if len(sys.argv) > 6 else 0
client = oras.client.OrasClient(hostname=host, insecure=True)
os.chdir(os.path.dirname(os.path.abspath(path)))
target = f"{host}/{repo}:{tag}"
extra = {"do_chunked": True, "chunk_size": chunk} if chunk else {}
resp = client.push(
    target=target,
    files=[f"{os.path.basename(path)}:application/vnd.example.data"],
    quiet=True,
    **extra,
)
if resp.status_code != 201:
    sys.exit(f"push answered {resp.status_code}: {resp.text}")
for pulled in client.pull(target=target, outdir=outdir):
    print(pulled)
