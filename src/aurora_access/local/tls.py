"""A certificate authority and a server certificate for a local cluster, made with openssl.

The server certificate names every address of the cluster (instances and endpoints) as IP
subject alternative names, so clients can use ``sslmode=verify-full`` against any of them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import LocalClusterError
from .processes import ServerUser


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_certificates(directory: Path, addresses: list[str], owner: ServerUser) -> TlsFiles:
    """A CA and a server certificate for ``addresses`` in ``directory`` (valid two days)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise LocalClusterError("TLS for the local cluster needs the openssl command "
                                "(Debian/Ubuntu: apt-get install openssl)")
    directory.mkdir(mode=0o755, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=" + ",".join(
        [f"IP:{a}" for a in addresses] + ["DNS:localhost"]) + "\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_cert, "-days", "2",
         "-subj", "/CN=aurora-access local CA"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr,
         "-subj", "/CN=aurora-access local cluster"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extensions],
    ]
    for step in steps:
        done = subprocess.run([str(a) for a in step], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise LocalClusterError(f"openssl failed making the local cluster's certificates: "
                                    f"{done.stderr.strip()[-500:]}")
    # PostgreSQL wants its key private to the user that runs it
    key.chmod(0o600)
    owner.chown(key)
    owner.chown(cert)
    return TlsFiles(ca_cert, cert, key)
