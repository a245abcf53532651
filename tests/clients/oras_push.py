"""Push a file as an OCI artifact with a subject, using the oras client from PyPI.

usage: oras_push.py HOST REPO TAG FILE SUBJECT_DIGEST SUBJECT_SIZE
Prints the pushed manifest's digest. ORAS_USER and ORAS_PASSWORD, when set,
are sent as Basic credentials; ORAS_ARTIFACT_TYPE sets the artifact type
(through the config media type).
"""
import os
import sys

import oras.client
import oras.oci

host, repo, tag, path, subject_digest, subject_size = sys.argv[1:7]
if os.environ.get("ORAS_USER"):
    # A Basic challenge: the basic backend (the default one reads the realm
    # as a token service URL).
    client = oras.client.OrasClient(hostname=host, insecure=True, auth_backend="basic")
    client.auth.set_basic_auth(os.environ["ORAS_USER"], os.environ["ORAS_PASSWORD"])
else:
    client = oras.client.OrasClient(hostname=host, insecure=True)
subject = oras.oci.Subject(
    mediaType="application/vnd.oci.image.manifest.v1+json",
    digest=subject_digest,
    size=int(subject_size),
)
os.chdir(os.path.dirname(os.path.abspath(path)))
extra = {}
if os.environ.get("ORAS_ARTIFACT_TYPE"):
    with open("artifact-config.json", "w") as f:
        f.write("{}")
    extra["manifest_config"] = "artifact-config.json:" + os.environ["ORAS_ARTIFACT_TYPE"]
resp = client.push(
    target=f"{host}/{repo}:{tag}",
    files=[f"{os.path.basename(path)}:application/vnd.example.signature"],
    subject=subject,
    quiet=True,
    **extra,
)
if resp.status_code != 201:
    sys.exit(f"push answered {resp.status_code}: {resp.text}")
print(resp.headers["Docker-Content-Digest"])
